//! The numpy and torch array routines diffusers' schedulers build timesteps and sigmas with,
//! reproduced to the bit (same operations, same order, same precision), so that schedules do
//! not drift by a rounding here and there: `torch.linspace`/`torch.cumprod` in float32,
//! `np.linspace`, `np.arange`, `np.round` and `np.interp` in float64.

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU.
///
/// ATen (`native/cpu/RangeFactoriesKernel.cpp`) converts both ends to float, takes a float
/// step `(end - start) / (steps - 1)` and computes the first half as `start + step * i` and
/// the second as `end - step * (steps - i - 1)`; the compiler fuses each into one FMA, hence
/// `mul_add` (checked bit-exact against torch 2.9.0 for several ranges and lengths).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (a, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![a];
    }
    let step = (e - a) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, a)
            } else {
                (-step).mul_add((steps - i - 1) as f32, e)
            }
        })
        .collect()
}

/// `torch.cumprod(x, 0)` of a float32 CPU tensor: ATen accumulates in double (`acc_type`)
/// and rounds each partial product to float (bit-exact against torch; an f32 accumulator is
/// off by up to 1e-6 relative at t = 999).
pub(crate) fn torch_cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `np.linspace(start, stop, num)` (float64): `arange(num) * step + start`, the last value set
/// to `stop` exactly.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = y.last_mut() {
        *last = stop;
    }
    y
}

/// `np.arange(start, stop, step)` with a float step: `ceil((stop - start) / step)` values, the
/// second `start + step`, the rest `start + i * delta` with `delta = (start + step) - start`
/// (numpy's `DOUBLE_fill`).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len > 0.0 { len as usize } else { 0 };
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.round` (half to even).
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, np.arange(len(fp)), fp)`: linear interpolation on the integer grid, clamped
/// to the end values (numpy's `arr_interp`, including its exact-hit shortcut).
pub(crate) fn np_interp_grid(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / ((j + 1) as f64 - xj);
    slope * (x - xj) + fp[j]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_torch_values() {
        // torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32)[[0, 1, 499, 500, 999]]
        let v = torch_linspace_f32(0.00085f64.powf(0.5), 0.012f64.powf(0.5), 1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(v[0], 0.00085f64.sqrt() as f32);
        assert_eq!(v[999], 0.012f64.sqrt() as f32);
        assert!((v[1] - 0.029235229).abs() < 1e-8);
        assert_eq!(torch_linspace_f32(0.5, 2.0, 1), vec![0.5]);
    }

    #[test]
    fn numpy_helpers() {
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(np_linspace(3.0, 9.0, 1), vec![3.0]);
        assert_eq!(
            np_arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(np_arange(0.0, 1.0, -1.0), Vec::<f64>::new());
        assert_eq!(np_round(0.5), 0.0);
        assert_eq!(np_round(1.5), 2.0);
        assert_eq!(np_round(-2.5), -2.0);
        let fp = [1.0, 3.0, 7.0];
        assert_eq!(np_interp_grid(0.5, &fp), 2.0);
        assert_eq!(np_interp_grid(1.25, &fp), 4.0);
        assert_eq!(np_interp_grid(2.0, &fp), 7.0);
        assert_eq!(np_interp_grid(-1.0, &fp), 1.0);
        assert_eq!(np_interp_grid(5.0, &fp), 7.0);
    }

    #[test]
    fn cumprod_accumulates_in_double() {
        let x = [0.5f32, 0.25, 0.999];
        let c = torch_cumprod_f32(&x);
        assert_eq!(c[0], 0.5);
        assert_eq!(c[1], 0.125);
        assert_eq!(c[2], (0.125f64 * 0.999f32 as f64) as f32);
    }
}
