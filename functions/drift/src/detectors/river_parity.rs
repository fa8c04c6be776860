//! Parity with River: the detectors run on the sequences recorded in
//! `reference/river_detections.json` (written by `reference/river_detections.py`, which states
//! the River version) and must signal where River did. ADWIN, Page-Hinkley and DDM match index
//! for index; KSWIN draws its samples with a different generator, so it is held to River's
//! behaviour (delay after a change, false-alarm rate) rather than to its indexes; PSI, which River
//! lacks, is checked against values the script computes by the same formula.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

const GOLDEN: &str = include_str!("../../reference/river_detections.json");

#[derive(Deserialize)]
struct Golden {
    river_version: String,
    parameters: Parameters,
    sequences: BTreeMap<String, Sequence>,
    river: BTreeMap<String, RiverDetections>,
    ks_cases: Vec<KsCase>,
    psi_cases: Vec<PsiCase>,
    psi_stream: PsiStream,
}

#[derive(Deserialize)]
struct Parameters {
    adwin: AdwinParameters,
    page_hinkley: PageHinkleyParameters,
    ddm: DdmConfig,
    kswin: KswinParameters,
    psi: PsiConfig,
}

#[derive(Deserialize)]
struct AdwinParameters {
    delta: f64,
    clock: u64,
    max_buckets: usize,
    min_window_length: u64,
    grace_period: u64,
}

#[derive(Deserialize)]
struct PageHinkleyParameters {
    min_instances: u64,
    delta: f64,
    threshold: f64,
    alpha: f64,
    mode: String,
}

#[derive(Deserialize)]
struct KswinParameters {
    alpha: f64,
    window_size: usize,
    stat_size: usize,
    seeds: Vec<u64>,
}

#[derive(Deserialize)]
struct Sequence {
    change_points: Vec<usize>,
    binary: bool,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct RiverDetections {
    adwin: Vec<usize>,
    page_hinkley: Vec<usize>,
    ddm: Option<DdmDetections>,
    /// Drift indexes by seed.
    kswin: Option<BTreeMap<String, Vec<usize>>>,
}

#[derive(Deserialize)]
struct DdmDetections {
    drifts: Vec<usize>,
    warnings: Vec<usize>,
}

#[derive(Deserialize)]
struct KsCase {
    name: String,
    a: Vec<f64>,
    b: Vec<f64>,
    statistic: f64,
    p_value: f64,
}

#[derive(Deserialize)]
struct Slice {
    sequence: String,
    start: usize,
    end: usize,
}

#[derive(Deserialize)]
struct PsiCase {
    name: String,
    reference: Slice,
    recent: Slice,
    bins: usize,
    edges: Vec<f64>,
    psi: f64,
}

#[derive(Deserialize)]
struct PsiStream {
    sequence: String,
    reference_size: usize,
    recent_size: usize,
    warnings: Vec<usize>,
    drifts: Vec<usize>,
    psi_every_50: BTreeMap<String, f64>,
}

fn golden() -> Golden {
    serde_json::from_str(GOLDEN).unwrap()
}

impl Golden {
    fn slice(&self, s: &Slice) -> &[f64] {
        &self.sequences[&s.sequence].values[s.start..s.end]
    }
}

/// Indexes at which `detector` reported `level` over `values`.
fn indexes(detector: &mut impl Detector, values: &[f64], level: Level) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, x)| detector.update(**x).unwrap().level == level)
        .map(|(i, _)| i)
        .collect()
}

/// |a - b| within `rel` of the larger magnitude (or of 1 near zero).
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn the_goldens_use_our_defaults() {
    let g = golden();
    assert!(!g.river_version.is_empty());
    let p = &g.parameters;
    let adwin = AdwinConfig::default();
    assert_eq!(
        (
            p.adwin.delta,
            p.adwin.clock,
            p.adwin.max_buckets,
            p.adwin.min_window_length,
            p.adwin.grace_period
        ),
        (
            adwin.delta,
            adwin.clock,
            adwin.max_buckets,
            adwin.min_window_length,
            adwin.grace_period
        )
    );
    let ph = PageHinkleyConfig::default();
    assert_eq!(
        (
            p.page_hinkley.min_instances,
            p.page_hinkley.delta,
            p.page_hinkley.threshold,
            p.page_hinkley.alpha
        ),
        (ph.min_instances, ph.delta, ph.threshold, ph.alpha)
    );
    assert_eq!(p.page_hinkley.mode, "both");
    assert_eq!(p.ddm, DdmConfig::default());
    let kswin = KswinConfig::default();
    assert_eq!(
        (p.kswin.alpha, p.kswin.window_size, p.kswin.stat_size),
        (kswin.alpha, kswin.window_size, kswin.stat_size)
    );
    assert_eq!(p.psi, PsiConfig::default());
}

#[test]
fn adwin_signals_where_river_does() {
    let g = golden();
    for (name, seq) in &g.sequences {
        let found = indexes(&mut Adwin::default(), &seq.values, Level::Drift);
        assert_eq!(found, g.river[name].adwin, "ADWIN on {name}");
    }
    // River's docstring example.
    assert_eq!(g.river["river_docstring_steps"].adwin, vec![1023]);
}

#[test]
fn page_hinkley_signals_where_river_does() {
    let g = golden();
    for (name, seq) in &g.sequences {
        let found = indexes(&mut PageHinkley::default(), &seq.values, Level::Drift);
        assert_eq!(found, g.river[name].page_hinkley, "Page-Hinkley on {name}");
    }
    assert_eq!(g.river["river_docstring_steps"].page_hinkley, vec![1006]);
}

#[test]
fn ddm_warns_and_signals_where_river_does() {
    let g = golden();
    let mut checked = 0;
    for (name, seq) in g.sequences.iter().filter(|(_, s)| s.binary) {
        let river = g.river[name].ddm.as_ref().unwrap();
        let mut ddm = Ddm::default();
        let levels: Vec<Level> = seq
            .values
            .iter()
            .map(|x| ddm.update(*x).unwrap().level)
            .collect();
        let at = |level| {
            levels
                .iter()
                .enumerate()
                .filter(|(_, l)| **l == level)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(Level::Drift), river.drifts, "DDM drifts on {name}");
        assert_eq!(at(Level::Warning), river.warnings, "DDM warnings on {name}");
        checked += 1;
    }
    assert_eq!(checked, 2);
    assert_eq!(
        g.river["river_docstring_ddm"].ddm.as_ref().unwrap().drifts,
        vec![1334]
    );
}

#[test]
fn ks_two_sample_matches_scipy() {
    for case in golden().ks_cases {
        let (statistic, p_value) = ks_two_sample(&case.a, &case.b);
        assert_eq!(statistic, case.statistic, "D on {}", case.name);
        assert!(
            close(p_value, case.p_value, 1e-12),
            "p on {}: {p_value} vs scipy {}",
            case.name,
            case.p_value
        );
    }
}

fn kswin(seed: u64) -> Kswin {
    Kswin::new(KswinConfig {
        seed,
        ..Default::default()
    })
    .unwrap()
}

/// KSWIN cannot match River index for index: River draws the older sample with Python's Mersenne
/// Twister, this detector with `StdRng`, so the same seed picks different values. The checks are
/// on behaviour instead.
///
/// False alarms. At α = 0.005 with a test after every value, KSWIN raises false alarms on a
/// stationary stream, River included: 8 to 17 per seed (59 over seeds 0-4) on the 10 000 values
/// of `stationary`. Over the same five seeds this detector must raise between half and twice
/// River's total (with rand 0.9.5 it raises 12 to 16 per seed, 74 in all, many at the same
/// indexes as River's: the data, not the draw, decides most alarms).
#[test]
fn kswin_false_alarm_rate_matches_rivers() {
    let g = golden();
    let values = &g.sequences["stationary"].values;
    let river: usize = g.river["stationary"]
        .kswin
        .as_ref()
        .unwrap()
        .values()
        .map(Vec::len)
        .sum();
    let ours: usize = g
        .parameters
        .kswin
        .seeds
        .iter()
        .map(|seed| indexes(&mut kswin(*seed), values, Level::Drift).len())
        .sum();
    assert!(
        ours * 2 >= river && ours <= river * 2,
        "{ours} false alarms against River's {river}"
    );
}

/// Delay and silence. On `river_docstring_steps` (values 0 or 1, then 4 to 7 from index 1000)
/// River detects within 13 values of the change for every seed 0-4 (1009 to 1013). With seeds
/// 0-4 this detector must detect within one statistic window (30 values) of the change (with
/// rand 0.9.5: 1011 to 1013), and, with seed 0 (River's seed 0 too), raise no alarm on the
/// stationary first 1000 values. Other seeds may raise one there (River's seed 2 does, at 821;
/// this detector's seed 1 at 558), which the rate test covers.
#[test]
fn kswin_detects_a_change_promptly_and_not_before_it() {
    let g = golden();
    let seq = &g.sequences["river_docstring_steps"];
    let change = seq.change_points[0];
    for (seed, river) in g.river["river_docstring_steps"].kswin.as_ref().unwrap() {
        assert!(
            river.iter().any(|i| (change..change + 30).contains(i)),
            "River seed {seed}: {river:?}"
        );
    }
    for seed in 0..5 {
        let found = indexes(&mut kswin(seed), &seq.values, Level::Drift);
        assert!(
            found.iter().any(|i| (change..change + 30).contains(i)),
            "seed {seed}: {found:?}"
        );
        if seed == 0 {
            assert!(found.iter().all(|i| *i >= change), "seed 0: {found:?}");
        }
    }
}

#[test]
fn psi_matches_the_reference_formula() {
    let g = golden();
    for case in &g.psi_cases {
        let config = PsiConfig {
            bins: case.bins,
            ..Default::default()
        };
        let bins = PsiBins::from_reference(g.slice(&case.reference), &config).unwrap();
        assert_eq!(
            bins.edges(),
            case.edges.as_slice(),
            "edges of {}",
            case.name
        );
        let value = bins.psi(g.slice(&case.recent)).unwrap();
        assert!(
            close(value, case.psi, 1e-12),
            "{}: {value} vs {}",
            case.name,
            case.psi
        );
    }
}

#[test]
fn streaming_psi_matches_the_reference_formula() {
    let g = golden();
    let s = &g.psi_stream;
    let mut stream = StreamingPsi::new(StreamingPsiConfig {
        psi: PsiConfig::default(),
        reference_size: s.reference_size,
        recent_size: s.recent_size,
        ..Default::default()
    })
    .unwrap();
    let (mut warnings, mut drifts) = (Vec::new(), Vec::new());
    for (i, x) in g.sequences[&s.sequence].values.iter().enumerate() {
        let d = stream.update(*x).unwrap();
        match d.level {
            Level::Warning => warnings.push(i),
            Level::Drift => drifts.push(i),
            Level::Stable => {}
        }
        if let Some(expected) = s.psi_every_50.get(&i.to_string()) {
            assert!(
                close(d.statistic, *expected, 1e-12),
                "PSI at {i}: {} vs {expected}",
                d.statistic
            );
        }
    }
    assert_eq!(drifts, s.drifts);
    assert_eq!(warnings, s.warnings);
}
