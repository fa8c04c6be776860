//! The artifact store's S3 path against a real S3-compatible server (moto): versions are written
//! once, read back verified, listed, and a damaged object is refused.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use chrono::Utc;
use freshet::ids::ModelName;
use freshet_model::store::{ArtifactError, ArtifactStore};
use freshet_model::{Manifest, ModelConfig, SequenceRange, Trainer, TrainingMetrics, sha256_hex};
use freshet_tests::S3Server;
use object_store::ObjectStoreExt;
use object_store::path::Path;

fn manifest(version: u64, bytes: &[u8]) -> Manifest {
    Manifest {
        model: "bookstore".into(),
        version,
        parent: version.checked_sub(1).filter(|v| *v > 0),
        config: ModelConfig::default(),
        schema: freshet_features::bookstore::schema(),
        sha256: sha256_hex(bytes),
        size_bytes: bytes.len() as u64,
        created_at: Utc::now(),
        step: 1,
        learned: Some(SequenceRange {
            first: 1,
            last: 10 * version,
        }),
        high_water_mark: 10 * version,
        lineage: None,
        traces: Vec::new(),
        metrics: TrainingMetrics::at_chance(10 * version, 10),
    }
}

#[tokio::test]
async fn versions_round_trip_through_s3_and_damage_is_refused() -> anyhow::Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("models").await?;
    // The standard AWS variables, as a MinIO user would set them. This test binary runs only
    // this test, so setting the process environment is safe.
    #[allow(unsafe_code)]
    // SAFETY: no other thread of this test binary reads or writes the environment concurrently.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let store = ArtifactStore::from_url("s3://models/freshet/prod")?;
    let model = ModelName::parse("bookstore")?;

    let bytes = Trainer::new(&ModelConfig::default(), 7)?.to_bytes()?;
    let manifests: Vec<Manifest> = (1..=3).map(|version| manifest(version, &bytes)).collect();
    for manifest in &manifests {
        store.put_version(manifest, &bytes).await?;
    }
    // Writing the same version again with the same contents is a harmless retry...
    store.put_version(&manifests[1], &bytes).await?;
    // ...with other bytes it is refused: versions are immutable.
    let other = Trainer::new(&ModelConfig::default(), 3)?.to_bytes()?;
    let err = store
        .put_version(&manifest(2, &other), &other)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::VersionExists { version: 2, .. }),
        "{err}"
    );

    assert_eq!(store.versions(&model).await?, vec![1, 2, 3]);
    assert_eq!(store.models().await?, vec!["bookstore".to_string()]);
    let (read_manifest, read_bytes) = store.load(&model, 2).await?;
    assert_eq!(read_bytes.as_ref(), bytes.as_slice());
    assert_eq!(read_manifest.high_water_mark, 20);

    // The objects sit under the URL's prefix in the bucket.
    store
        .object_store()
        .head(&Path::from("models/bookstore/3/model.bin"))
        .await
        .expect("prefix is applied by the store, not visible to callers");

    // Damage version 3's bytes behind the store's back: loading it must fail verification.
    let mut damaged = bytes.clone();
    damaged[20] ^= 0xff;
    let raw = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name("models")
        .with_allow_http(true)
        .build()?;
    raw.put(
        &Path::from("freshet/prod/models/bookstore/3/model.bin"),
        damaged.into(),
    )
    .await?;
    let err = store.load(&model, 3).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::Verification { version: 3, .. }),
        "{err}"
    );

    let err = store.load(&model, 9).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::Missing { version: 9, .. }),
        "{err}"
    );
    Ok(())
}
