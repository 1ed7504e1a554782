//! What one picture of the procedural world holds: one object (shape, colour, size, position,
//! fill pattern) on a background, drawn in a rendering style. `pattern` and `style` are the
//! attributes no caption ever names (see `captions.rs`): only textual inversion can ask for them,
//! as with the paper's personal objects and artistic styles (Gal et al. 2022, section 1).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// One attribute of the world: its name and its values' words, in label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute {
    pub name: &'static str,
    pub values: &'static [&'static str],
    /// Whether captions ever name it.
    pub captioned: bool,
}

pub const SHAPE: Attribute = Attribute {
    name: "shape",
    values: &["circle", "square", "triangle"],
    captioned: true,
};
pub const COLOUR: Attribute = Attribute {
    name: "colour",
    values: &["red", "green", "blue", "yellow"],
    captioned: true,
};
pub const SIZE: Attribute = Attribute {
    name: "size",
    values: &["small", "large"],
    captioned: true,
};
pub const POSITION: Attribute = Attribute {
    name: "position",
    values: &["top left", "top right", "bottom left", "bottom right"],
    captioned: true,
};
pub const BACKGROUND: Attribute = Attribute {
    name: "background",
    values: &["white", "black", "red", "blue"],
    captioned: true,
};
/// The object's fill: the "decoration" of a personal object.
pub const PATTERN: Attribute = Attribute {
    name: "pattern",
    values: &["solid", "striped", "outlined"],
    captioned: false,
};
/// How the whole picture is drawn: the "artistic style".
pub const STYLE: Attribute = Attribute {
    name: "style",
    values: &["plain", "framed", "hatched"],
    captioned: false,
};

/// Every attribute, in the order of [`Scene::labels`].
pub const ATTRIBUTES: [Attribute; 7] = [SHAPE, COLOUR, SIZE, POSITION, BACKGROUND, PATTERN, STYLE];

/// Attribute values as label indices into each [`Attribute::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub shape: usize,
    pub colour: usize,
    pub size: usize,
    pub position: usize,
    pub background: usize,
    pub pattern: usize,
    pub style: usize,
    /// Sub-pixel jitter of the object's centre and size, in 1/16 px, so no two pictures of one
    /// scene description are identical.
    pub jitter: [i8; 3],
}

/// How often the uncaptioned values occur in the base model's training pictures: the plain
/// value half the time, each other one a quarter.
const HIDDEN_WEIGHTS: [f64; 3] = [0.5, 0.25, 0.25];

fn weighted(rng: &mut impl Rng, weights: &[f64]) -> usize {
    let mut r: f64 = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

impl Scene {
    /// A random scene of the base world. The object's colour always differs from the
    /// background's (red or blue on red or blue would be invisible).
    pub fn random(rng: &mut impl Rng) -> Self {
        let background = rng.random_range(0..BACKGROUND.values.len());
        let colour = loop {
            let c = rng.random_range(0..COLOUR.values.len());
            if COLOUR.values[c] != BACKGROUND.values[background] {
                break c;
            }
        };
        Self {
            shape: rng.random_range(0..SHAPE.values.len()),
            colour,
            size: rng.random_range(0..SIZE.values.len()),
            position: rng.random_range(0..POSITION.values.len()),
            background,
            pattern: weighted(rng, &HIDDEN_WEIGHTS),
            style: weighted(rng, &HIDDEN_WEIGHTS),
            jitter: Self::random_jitter(rng),
        }
    }

    pub fn random_jitter(rng: &mut impl Rng) -> [i8; 3] {
        [
            rng.random_range(-16..=16),
            rng.random_range(-16..=16),
            rng.random_range(-8..=8),
        ]
    }

    /// Label indices in the order of [`ATTRIBUTES`].
    pub fn labels(&self) -> [usize; 7] {
        [
            self.shape,
            self.colour,
            self.size,
            self.position,
            self.background,
            self.pattern,
            self.style,
        ]
    }

    /// Sets attribute `index` (of [`ATTRIBUTES`]) to `value`.
    pub fn set(&mut self, index: usize, value: usize) {
        let slot = match index {
            0 => &mut self.shape,
            1 => &mut self.colour,
            2 => &mut self.size,
            3 => &mut self.position,
            4 => &mut self.background,
            5 => &mut self.pattern,
            _ => &mut self.style,
        };
        *slot = value;
    }

    /// Whether the scene can be drawn visibly (object colour differs from the background).
    pub fn is_visible(&self) -> bool {
        COLOUR.values[self.colour] != BACKGROUND.values[self.background]
    }
}

/// The label index of `word` in `attribute`.
pub fn value_index(attribute: &Attribute, word: &str) -> Option<usize> {
    attribute.values.iter().position(|v| *v == word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn random_scenes_cover_every_value_and_stay_visible() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let scenes: Vec<Scene> = (0..4000).map(|_| Scene::random(&mut rng)).collect();
        for (a, attr) in ATTRIBUTES.iter().enumerate() {
            for v in 0..attr.values.len() {
                assert!(
                    scenes.iter().any(|s| s.labels()[a] == v),
                    "{} never takes {}",
                    attr.name,
                    attr.values[v]
                );
            }
        }
        assert!(scenes.iter().all(Scene::is_visible));
        let plain = scenes.iter().filter(|s| s.style == 0).count() as f64 / 4000.0;
        assert!((plain - 0.5).abs() < 0.05, "plain style share {plain}");
    }

    #[test]
    fn set_changes_the_named_attribute() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut s = Scene::random(&mut rng);
        for a in 0..ATTRIBUTES.len() {
            s.set(a, 1);
            assert_eq!(s.labels()[a], 1);
        }
    }
}
