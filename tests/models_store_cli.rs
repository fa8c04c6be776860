//! `freshet models list` when the artifact store is not what it should be, against a real
//! nats-server and a real S3-compatible server (moto): with no S3 credentials configured, the
//! command says which settings are missing (not a connection error to the EC2 instance metadata
//! endpoint); when the store cannot be read, it still shows what the pointers say and exits 1.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, S3Server, Stack, run_cli};

/// Runs `freshet models list` against the stack's server with the store at `url` and exactly
/// the AWS_* variables given; returns (exit code, stdout, stderr).
fn list(stack: &Stack, url: &str, aws: &[(String, String)]) -> (Option<i32>, String, String) {
    let mut command = stack.freshet();
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("AWS_")) {
        command.env_remove(name);
    }
    command
        .args(["models", "list"])
        .env("FRESHET_OBJECT_STORE", url)
        .envs(aws.iter().cloned());
    let run = run_cli(&mut command);
    (run.code, run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_says_which_s3_credentials_are_missing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let s3 = S3Server::start()?;
    s3.create_bucket("models").await?;
    let endpoint_only: Vec<(String, String)> = s3
        .client_env()
        .into_iter()
        .filter(|(name, _)| !name.contains("ACCESS_KEY"))
        .collect();

    let (code, out, err) = list(&stack, "s3://models/freshet", &endpoint_only);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("no S3 credentials for s3://models/freshet: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(
        !err.contains("/latest/api/token"),
        "not a metadata endpoint error: {err}"
    );

    // The same store with its keys is read, and the command succeeds.
    let (code, out, err) = list(&stack, "s3://models/freshet", &s3.client_env());
    assert_eq!(code, Some(0), "{out}\n{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_fails_when_the_store_cannot_be_read() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let manifest = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &manifest.sha256).await?;
    let s3 = S3Server::start()?;

    // The bucket does not exist: every listing fails.
    let (code, out, err) = list(&stack, "s3://missing-bucket/freshet", &s3.client_env());
    assert_eq!(
        code,
        Some(1),
        "an unreadable store must fail the command:\n{out}\n{err}"
    );
    assert!(
        // MODEL LIVE CANDIDATE "LIVE AGE" VERSIONS HOLD: the versions are the fifth column.
        out.lines().any(
            |line| line.starts_with("bookstore") && line.split_whitespace().nth(4) == Some("?")
        ),
        "the pointers are still shown, versions unknown:\n{out}"
    );
    assert!(
        err.contains("the artifact store s3://missing-bucket/freshet could not be read"),
        "{err}"
    );
    Ok(())
}
