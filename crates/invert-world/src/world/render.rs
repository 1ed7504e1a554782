//! Draws a [`Scene`] as an RGB picture, antialiased by 4x4 supersampling. Every length is a
//! fraction of the picture's side, so any size renders the same scene.

use super::scene::{BACKGROUND, COLOUR, Scene};

/// Object colours, in the order of `COLOUR.values`.
const OBJECT_RGB: [[f32; 3]; 4] = [
    [220.0, 40.0, 40.0],
    [40.0, 170.0, 60.0],
    [40.0, 80.0, 220.0],
    [235.0, 200.0, 40.0],
];
/// Background colours, in the order of `BACKGROUND.values` (red and blue as the objects').
const BACKGROUND_RGB: [[f32; 3]; 4] = [
    [245.0, 245.0, 245.0],
    [20.0, 20.0, 20.0],
    [220.0, 40.0, 40.0],
    [40.0, 80.0, 220.0],
];

const SUPERSAMPLE: usize = 4;

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn luminance(c: [f32; 3]) -> f32 {
    (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0
}

/// A shade that stands out against `c`: near black on light colours, near white on dark ones.
fn contrast(c: [f32; 3]) -> [f32; 3] {
    if luminance(c) > 0.45 {
        [25.0, 25.0, 25.0]
    } else {
        [235.0, 235.0, 235.0]
    }
}

/// Signed distance (in units of the picture side) from `p` to the shape's outline; negative
/// inside. `r` is the object's radius.
fn shape_distance(shape: usize, p: [f32; 2], c: [f32; 2], r: f32) -> f32 {
    let (dx, dy) = (p[0] - c[0], p[1] - c[1]);
    match shape {
        // circle
        0 => (dx * dx + dy * dy).sqrt() - r,
        // square, a little smaller than the circle so both cover about the same area
        1 => dx.abs().max(dy.abs()) - r * 0.88,
        // triangle pointing up, with its centroid at c: the largest of the three edge
        // distances (each edge's outward unit normal dotted with p - c, minus the inradius)
        _ => {
            let inradius = r * 0.62;
            let s3 = 3f32.sqrt() / 2.0;
            let e1 = dy - inradius; // bottom edge (y grows downwards)
            let e2 = -0.5 * dy + s3 * dx - inradius;
            let e3 = -0.5 * dy - s3 * dx - inradius;
            e1.max(e2).max(e3)
        }
    }
}

/// The object's centre and radius, in units of the picture side.
fn placement(scene: &Scene) -> ([f32; 2], f32) {
    let centre = [
        if scene.position.is_multiple_of(2) {
            0.27
        } else {
            0.73
        } + scene.jitter[0] as f32 / 16.0 / 32.0,
        if scene.position < 2 { 0.27 } else { 0.73 } + scene.jitter[1] as f32 / 16.0 / 32.0,
    ];
    let radius = if scene.size == 0 { 0.15 } else { 0.22 } + scene.jitter[2] as f32 / 16.0 / 32.0;
    (centre, radius)
}

/// The colour of the point `p` (in units of the picture side) of `scene`.
fn colour_at(scene: &Scene, p: [f32; 2]) -> [f32; 3] {
    let bg = BACKGROUND_RGB[scene.background];
    let obj = OBJECT_RGB[scene.colour];
    let (centre, radius) = placement(scene);
    let d = shape_distance(scene.shape, p, centre, radius);
    // style: framed draws a border, hatched draws diagonal lines over the background
    let frame = 0.07;
    let on_frame = scene.style == 1
        && (p[0] < frame || p[1] < frame || p[0] > 1.0 - frame || p[1] > 1.0 - frame);
    if on_frame {
        return contrast(bg);
    }
    if d < 0.0 {
        match scene.pattern {
            // striped: horizontal bands of the colour and a dark shade of it
            1 => {
                let band = ((p[1] - centre[1]) / 0.09).floor() as i32;
                if band.rem_euclid(2) == 0 {
                    return obj;
                }
                return mix(obj, [0.0, 0.0, 0.0], 0.6);
            }
            // outlined: a ring; the inside shows the background
            2 if d < -0.085 => {}
            _ => return obj,
        }
    }
    if scene.style == 2 {
        let u = (p[0] + p[1]) / 0.18;
        if u - u.floor() < 0.35 {
            return mix(bg, contrast(bg), 0.55);
        }
    }
    bg
}

/// `scene` as `size`x`size` RGB8, row-major.
pub fn render(scene: &Scene, size: usize) -> Vec<u8> {
    debug_assert!(
        scene.is_visible(),
        "{}/{}",
        COLOUR.values[scene.colour],
        BACKGROUND.values[scene.background]
    );
    let mut out = Vec::with_capacity(size * size * 3);
    let step = 1.0 / (size * SUPERSAMPLE) as f32;
    for y in 0..size {
        for x in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let p = [
                        ((x * SUPERSAMPLE + sx) as f32 + 0.5) * step,
                        ((y * SUPERSAMPLE + sy) as f32 + 0.5) * step,
                    ];
                    let c = colour_at(scene, p);
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            let n = (SUPERSAMPLE * SUPERSAMPLE) as f32;
            out.extend(acc.iter().map(|v| (v / n).round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

/// Which cells of a `cells`x`cells` grid over the picture the object touches (1.0) and which
/// show only the background (0.0), row-major: the object's place at latent resolution, for the
/// pretraining loss's object weight (`PretrainConfig::object_weight`).
pub fn object_mask(scene: &Scene, cells: usize) -> Vec<f32> {
    let (centre, radius) = placement(scene);
    let side = 1.0 / cells as f32;
    // a cell is touched when the outline passes within half its diagonal of the cell's centre
    let reach = side * std::f32::consts::FRAC_1_SQRT_2;
    (0..cells * cells)
        .map(|i| {
            let p = [
                ((i % cells) as f32 + 0.5) * side,
                ((i / cells) as f32 + 0.5) * side,
            ];
            f32::from(shape_distance(scene.shape, p, centre, radius) < reach)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene() -> Scene {
        Scene {
            shape: 0,
            colour: 0,
            size: 1,
            position: 0,
            background: 0,
            pattern: 0,
            style: 0,
            jitter: [0, 0, 0],
        }
    }

    fn pixel(img: &[u8], size: usize, x: usize, y: usize) -> [u8; 3] {
        let i = (y * size + x) * 3;
        [img[i], img[i + 1], img[i + 2]]
    }

    #[test]
    fn object_sits_in_its_quadrant_on_its_background() {
        let img = render(&scene(), 32);
        assert_eq!(
            pixel(&img, 32, 9, 9),
            [220, 40, 40],
            "red object at top left"
        );
        assert_eq!(
            pixel(&img, 32, 24, 24),
            [245, 245, 245],
            "white background elsewhere"
        );
        let mut s = scene();
        s.position = 3;
        let img = render(&s, 32);
        assert_eq!(pixel(&img, 32, 23, 23), [220, 40, 40]);
        assert_eq!(pixel(&img, 32, 9, 9), [245, 245, 245]);
    }

    #[test]
    fn hidden_attributes_change_the_picture() {
        let base = render(&scene(), 32);
        for (pattern, style) in [(1, 0), (2, 0), (0, 1), (0, 2)] {
            let mut s = scene();
            s.pattern = pattern;
            s.style = style;
            let img = render(&s, 32);
            let changed = base
                .chunks(3)
                .zip(img.chunks(3))
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                changed > 20,
                "pattern {pattern} style {style}: {changed} pixels differ"
            );
        }
        let mut outlined = scene();
        outlined.pattern = 2;
        assert_eq!(
            pixel(&render(&outlined, 32), 32, 9, 9),
            [245, 245, 245],
            "hollow centre"
        );
        let mut framed = scene();
        framed.style = 1;
        assert_eq!(
            pixel(&render(&framed, 32), 32, 0, 16),
            [25, 25, 25],
            "dark frame on white"
        );
    }

    #[test]
    fn object_mask_covers_every_cell_the_object_is_drawn_in() {
        for (shape, size, position) in [(0, 1, 0), (1, 0, 3), (2, 1, 1), (2, 0, 2)] {
            let s = Scene {
                shape,
                size,
                position,
                jitter: [3, -2, 1],
                ..scene()
            };
            let (cells, f) = (16, 2);
            let mask = object_mask(&s, cells);
            let img = render(&s, cells * f);
            let background = pixel(
                &img,
                cells * f,
                31 - 31 * (position % 2),
                31 - 31 * (position / 2),
            );
            for (i, &m) in mask.iter().enumerate() {
                let (cx, cy) = (i % cells, i / cells);
                let drawn = (0..f * f)
                    .any(|k| pixel(&img, cells * f, cx * f + k % f, cy * f + k / f) != background);
                // every cell the object shows in is marked
                if drawn {
                    assert_eq!(m, 1.0, "shape {shape} size {size}: cell {cx},{cy}");
                }
            }
            // and not much more: every shape covers 2 to 3.2 r^2 (triangle to circle), and the
            // mask reaches half a cell's diagonal past the outline
            let marked = mask.iter().filter(|&&m| m == 1.0).count();
            let r2 = if size == 0 { 0.15f32 } else { 0.22 }.powi(2) * (cells * cells) as f32;
            assert!(
                marked as f32 > 2.0 * r2 && (marked as f32) < 8.0 * r2,
                "shape {shape} size {size}: {marked} cells"
            );
        }
    }

    #[test]
    fn rendering_is_deterministic_and_sized() {
        let a = render(&scene(), 48);
        assert_eq!(a.len(), 48 * 48 * 3);
        assert_eq!(a, render(&scene(), 48));
    }
}
