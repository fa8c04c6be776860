//! Seeded initial parameter values, identical on every machine.
//!
//! Models whose parameters cannot start at zero (the MLP's hidden layer would stay symmetric,
//! the factorization machine's pairwise gradients would stay zero) draw them from this
//! generator. It is SplitMix64 (Steele, Lea & Flood, 2014) and uses integer and basic IEEE
//! arithmetic only (no `ln` or `cos`, whose last bits depend on the platform's libm), so the
//! same seed gives bit-identical parameters, hence identical artifacts and SHA-256s, anywhere.

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub(crate) struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A stream for one parameter tensor: the model seed mixed with the tensor's index, so
    /// tensors are independent and adding one does not shift the values of the others.
    pub(crate) fn for_tensor(seed: u64, tensor: u64) -> SeededRng {
        let mut rng = SeededRng {
            state: seed ^ tensor.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        // Discard one output so nearby seeds do not start from nearby states.
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-limit, limit).
    pub(crate) fn uniform(&mut self, limit: f64) -> f32 {
        ((self.unit() * 2.0 - 1.0) * limit) as f32
    }

    /// Approximately normal with mean 0 and standard deviation `std`: the Irwin–Hall sum of
    /// twelve uniforms minus six, which has exactly unit variance and needs no transcendental
    /// functions. Its tails stop at ±6σ, which an initialisation never misses.
    pub(crate) fn normal(&mut self, std: f64) -> f32 {
        let sum: f64 = (0..12).map(|_| self.unit()).sum();
        ((sum - 6.0) * std) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_sensible_moments() {
        let draw = |seed| {
            let mut rng = SeededRng::for_tensor(seed, 2);
            (0..10_000).map(|_| rng.normal(0.1)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let mean = a.iter().map(|x| f64::from(*x)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.005, "std {}", var.sqrt());

        let mut rng = SeededRng::for_tensor(7, 0);
        let u: Vec<f32> = (0..1000).map(|_| rng.uniform(0.5)).collect();
        assert!(u.iter().all(|x| (-0.5..0.5).contains(x)));
        assert!(u.iter().any(|x| *x > 0.4) && u.iter().any(|x| *x < -0.4));
    }
}
