//! `cpu-heavy`: counts the primes below arg `below` (default 200000) by trial
//! division and returns its args plus `primes`, the count.
//!
//! Pure computation in tight loops, no host calls and almost no memory: the
//! workload on which fuel metering (an instruction counter updated in every
//! loop iteration) costs the most. `corral bench sandbox` runs it on an engine
//! with fuel on and one with fuel off to measure that cost. Well-behaved; a
//! `below` that is not a non-negative integer is a fatal error.

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_BELOW: u32 = 200_000;

fn cpu_heavy(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let below = args.get_opt::<u32>("below")?.unwrap_or(DEFAULT_BELOW);
    let primes = count_primes(below);
    args.insert("primes", &primes)?;
    Ok(Output::new(args).log(format!("{primes} primes below {below}")))
}

/// Primes in `0..below`, each candidate tried against every odd divisor up to
/// its square root: deliberately naive, so the work is all loops.
fn count_primes(below: u32) -> u32 {
    let mut count = 0;
    for n in 2..below {
        if is_prime(n) {
            count += 1;
        }
    }
    count
}

fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

export_handler!(cpu_heavy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_primes() {
        assert_eq!(count_primes(0), 0);
        assert_eq!(count_primes(3), 1);
        assert_eq!(count_primes(10), 4);
        assert_eq!(count_primes(100), 25);
        assert_eq!(count_primes(200_000), 17_984);
    }
}
