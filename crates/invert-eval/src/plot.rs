//! The reconstruction-vs-editability plot of the paper's Figure 10, as a PNG: one marker per
//! (concept, method), the colour giving the method and the shape the concept.

use crate::font::glyph;
use crate::{ConceptScore, Method};

const W: usize = 720;
const H: usize = 520;
/// Plot area: left, top, right, bottom.
const AREA: (usize, usize, usize, usize) = (70, 40, 470, 440);

struct Canvas {
    rgb: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            rgb: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (ox + col * scale, y + row as i64 * scale);
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    /// A filled marker of `shape` (0 circle, 1 square, 2 triangle, 3 diamond) centred at (x, y).
    fn marker(&mut self, x: i64, y: i64, shape: usize, c: [u8; 3]) {
        let r = 7i64;
        for dy in -r..=r {
            for dx in -r..=r {
                let inside = match shape % 4 {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => dx.abs() < r && dy.abs() < r,
                    2 => dy >= -r && dy <= r - 2 && 2 * dx.abs() <= dy + r,
                    _ => dx.abs() + dy.abs() <= r,
                };
                if inside {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }
}

pub fn method_colour(m: Method) -> [u8; 3] {
    match m {
        Method::Learned => [220, 40, 40],
        Method::InitWord => [40, 80, 220],
        Method::BestText => [30, 150, 60],
        Method::PromptOnly => [120, 120, 120],
    }
}

/// The plot as RGB8 `W`x`H` on axes from 0 to 1 (the oracle's fractions); `concepts` in
/// legend order.
pub fn render(scores: &[ConceptScore], concepts: &[String]) -> (usize, usize, Vec<u8>) {
    render_on(scores, concepts, (0.0, 1.0), (0.0, 1.0))
}

/// Axis limits that hold every point with a margin, on a 0.05 grid (CLIP similarities sit in
/// a narrow band, e.g. text similarity 0.2-0.35).
pub fn fitted_ranges(scores: &[ConceptScore]) -> ((f64, f64), (f64, f64)) {
    let fit = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return (0.0, 1.0);
        }
        let lo = ((lo - 0.02) / 0.05).floor() * 0.05;
        let hi = ((hi + 0.02) / 0.05).ceil() * 0.05;
        (lo, hi.max(lo + 0.05))
    };
    (
        fit(scores.iter().map(|s| s.reconstruction).collect()),
        fit(scores.iter().map(|s| s.editability).collect()),
    )
}

/// The plot with reconstruction from `x.0` to `x.1` and editability from `y.0` to `y.1`.
pub fn render_on(
    scores: &[ConceptScore],
    concepts: &[String],
    x: (f64, f64),
    y: (f64, f64),
) -> (usize, usize, Vec<u8>) {
    let mut c = Canvas::new();
    let (l, t, r, b) = (AREA.0 as i64, AREA.1 as i64, AREA.2 as i64, AREA.3 as i64);
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    for k in 0..=5 {
        let f = k as f64 / 5.0;
        let (px, py) = (
            l + ((r - l) as f64 * f) as i64,
            b - ((b - t) as f64 * f) as i64,
        );
        c.rect(px, t, px, b, grey);
        c.rect(l, py, r, py, grey);
        let (vx, vy) = (x.0 + (x.1 - x.0) * f, y.0 + (y.1 - y.0) * f);
        c.text(px - 12, b + 8, &format!("{vx:.2}"), 1, black);
        c.text(l - 34, py - 3, &format!("{vy:.2}"), 1, black);
    }
    c.rect(l, b, r, b + 1, black);
    c.rect(l - 1, t, l, b, black);
    c.text(l + 110, b + 26, "RECONSTRUCTION", 2, black);
    c.text(l - 60, t - 30, "EDITABILITY", 2, black);
    let to_px = |recon: f64, edit: f64| {
        let fx = ((recon - x.0) / (x.1 - x.0)).clamp(0.0, 1.0);
        let fy = ((edit - y.0) / (y.1 - y.0)).clamp(0.0, 1.0);
        (
            l + ((r - l) as f64 * fx) as i64,
            b - ((b - t) as f64 * fy) as i64,
        )
    };
    for s in scores {
        let shape = concepts.iter().position(|n| *n == s.concept).unwrap_or(0);
        let (x, y) = to_px(s.reconstruction, s.editability);
        c.marker(x, y, shape, method_colour(s.method));
    }
    // legend
    let lx = r + 30;
    let mut ly = t + 10;
    c.text(lx, ly, "METHOD", 2, black);
    ly += 24;
    for m in Method::ALL
        .into_iter()
        .filter(|m| scores.iter().any(|s| s.method == *m))
    {
        c.marker(lx + 7, ly + 6, 1, method_colour(m));
        c.text(lx + 22, ly + 3, m.name(), 1, black);
        ly += 20;
    }
    ly += 16;
    c.text(lx, ly, "CONCEPT", 2, black);
    ly += 24;
    for (i, n) in concepts.iter().enumerate() {
        c.marker(lx + 7, ly + 6, i, [90, 90, 90]);
        c.text(lx + 22, ly + 3, n, 1, black);
        ly += 20;
    }
    (W, H, c.rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_land_where_the_scores_say() {
        let scores = vec![ConceptScore {
            concept: "a".into(),
            method: Method::Learned,
            reconstruction: 1.0,
            editability: 0.0,
            edits: vec![],
        }];
        let (w, _, rgb) = render(&scores, &["a".into()]);
        let px = |x: usize, y: usize| {
            [
                rgb[(y * w + x) * 3],
                rgb[(y * w + x) * 3 + 1],
                rgb[(y * w + x) * 3 + 2],
            ]
        };
        assert_eq!(px(AREA.2, AREA.3 - 3), method_colour(Method::Learned));
        assert_eq!(px(AREA.0 + 200, AREA.1 + 100), [255, 255, 255]);
    }
}
