//! The bundled concept sets (`datasets/`): two objects and two styles, each shown by five
//! pictures that carry an attribute no caption names. For each, the prompts `invert eval` uses:
//! reconstruction (does "a photo of S*" show the concept?) and editability (are the other words
//! of the prompt obeyed?), Gal et al. 2022 section 5 and Figure 10.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scene::{
    ATTRIBUTES, BACKGROUND, COLOUR, PATTERN, POSITION, SHAPE, SIZE, STYLE, Scene, value_index,
};

/// Object or style (paper: templates and initialisers differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Style,
}

/// An editability prompt: `{}` stands for the word under test; `asks` lists the attribute
/// values the prompt asks for.
#[derive(Debug, Clone)]
pub struct EditPrompt {
    pub template: &'static str,
    pub asks: Vec<(&'static str, &'static str)>,
}

/// One concept set.
#[derive(Debug, Clone)]
pub struct Concept {
    /// Folder name under `datasets/`.
    pub name: &'static str,
    pub token: &'static str,
    pub kind: Kind,
    /// The attribute values that make the concept (what reconstruction checks).
    pub identity: Vec<(&'static str, &'static str)>,
    /// The paper's baseline: a single coarse word the training starts from.
    pub init_word: &'static str,
    /// The best plain-text description: every attribute of the identity that words can name (in
    /// place of the word, so without an article for objects).
    pub best_text: &'static str,
    /// Reconstruction prompt, `{}` standing for the word.
    pub reconstruction: &'static str,
    pub edits: Vec<EditPrompt>,
}

fn ask(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    pairs.to_vec()
}

/// The four bundled concept sets.
pub fn bundled() -> Vec<Concept> {
    let object_edits = |_: ()| {
        vec![
            EditPrompt {
                template: "a photo of a {} on a red background",
                asks: ask(&[("background", "red")]),
            },
            EditPrompt {
                template: "a photo of a {} at the bottom right",
                asks: ask(&[("position", "bottom right")]),
            },
            EditPrompt {
                template: "a {} on a black background at the top left",
                asks: ask(&[("background", "black"), ("position", "top left")]),
            },
            EditPrompt {
                template: "a photo of a small {}",
                asks: ask(&[("size", "small")]),
            },
        ]
    };
    let style_edits = |_: ()| {
        vec![
            EditPrompt {
                template: "a blue circle in the style of {}",
                asks: ask(&[("colour", "blue"), ("shape", "circle")]),
            },
            EditPrompt {
                template: "a red square at the top left in the style of {}",
                asks: ask(&[
                    ("colour", "red"),
                    ("shape", "square"),
                    ("position", "top left"),
                ]),
            },
            EditPrompt {
                template: "a yellow triangle on a black background in the style of {}",
                asks: ask(&[
                    ("colour", "yellow"),
                    ("shape", "triangle"),
                    ("background", "black"),
                ]),
            },
        ]
    };
    vec![
        Concept {
            name: "striped-triangle",
            token: "<striped-triangle>",
            kind: Kind::Object,
            identity: ask(&[
                ("shape", "triangle"),
                ("colour", "yellow"),
                ("pattern", "striped"),
            ]),
            init_word: "triangle",
            best_text: "yellow triangle",
            reconstruction: "a photo of a {}",
            edits: object_edits(()),
        },
        Concept {
            name: "outlined-square",
            token: "<outlined-square>",
            kind: Kind::Object,
            identity: ask(&[
                ("shape", "square"),
                ("colour", "green"),
                ("pattern", "outlined"),
            ]),
            init_word: "square",
            best_text: "green square",
            reconstruction: "a photo of a {}",
            edits: object_edits(()),
        },
        Concept {
            name: "framed-style",
            token: "<framed-style>",
            kind: Kind::Style,
            identity: ask(&[("style", "framed")]),
            init_word: "painting",
            best_text: "a painting",
            reconstruction: "a painting in the style of {}",
            edits: style_edits(()),
        },
        Concept {
            name: "hatched-style",
            token: "<hatched-style>",
            kind: Kind::Style,
            identity: ask(&[("style", "hatched")]),
            init_word: "painting",
            best_text: "a painting",
            reconstruction: "a painting in the style of {}",
            edits: style_edits(()),
        },
    ]
}

/// Attribute index and value index of a (name, value) pair of this module's tables.
pub fn resolve(pair: (&str, &str)) -> (usize, usize) {
    let a = ATTRIBUTES
        .iter()
        .position(|a| a.name == pair.0)
        .unwrap_or_else(|| panic!("no attribute {}", pair.0));
    let v = value_index(&ATTRIBUTES[a], pair.1)
        .unwrap_or_else(|| panic!("{} has no value {}", pair.0, pair.1));
    (a, v)
}

impl Concept {
    /// Whether a picture with `labels` shows the concept.
    pub fn shown_in(&self, labels: &[usize]) -> bool {
        self.identity.iter().all(|&p| {
            let (a, v) = resolve(p);
            labels[a] == v
        })
    }

    /// The `count` scenes of the concept set, drawn from `seed`: the identity fixed, the rest
    /// varied (objects: plain style; styles: solid fill) and every picture different.
    pub fn scenes(&self, count: usize, seed: u64) -> Vec<Scene> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut scenes: Vec<Scene> = Vec::new();
        while scenes.len() < count {
            let mut s = Scene::random(&mut rng);
            match self.kind {
                Kind::Object => s.style = 0,
                Kind::Style => s.pattern = 0,
            }
            for &p in &self.identity {
                let (a, v) = resolve(p);
                s.set(a, v);
            }
            // spread the varied attributes: a new position for each picture while possible;
            // styles in both sizes, objects large (an object set shows one object, and its fill
            // is a few pixels even then; docs/WORLD.md, objects)
            s.position = (scenes.len() + rng.random_range(0..2)) % POSITION.values.len();
            s.size = match self.kind {
                Kind::Object => value_index(&SIZE, "large").expect("large is a size"),
                Kind::Style => (scenes.len() + seed as usize) % 2,
            };
            let repeat = scenes.iter().any(|o| o.labels() == s.labels());
            if s.is_visible() && !repeat {
                scenes.push(s);
            }
        }
        scenes
    }
}

/// The caption written beside a concept-set picture (`NAME.txt`, the `{caption}` of the world
/// templates, `configs/templates/world-*.txt`): in the words of the base model's captions, what
/// the picture shows besides the concept. An object's caption gives its place ("at the top left
/// on a red background"), so the word is left to carry the object; a style's caption gives the
/// whole content ("a large green triangle at the top left on a red background"), so the word is
/// left to carry the style. Without it the word also had to explain five different contents,
/// which dominated its loss (docs/WORLD.md, results); A1111 calls these `[filewords]`.
pub fn caption(kind: Kind, scene: &Scene) -> String {
    let place = format!(
        "at the {} on a {} background",
        POSITION.values[scene.position], BACKGROUND.values[scene.background]
    );
    match kind {
        Kind::Object => place,
        // sizes are "small" and "large": the article is always "a"
        Kind::Style => format!(
            "a {} {} {} {place}",
            SIZE.values[scene.size], COLOUR.values[scene.colour], SHAPE.values[scene.shape]
        ),
    }
}

/// The value words of every attribute in `labels` (for file names and README tables).
pub fn describe(labels: &[usize]) -> String {
    let [shape, colour, size, position, background, pattern, style] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| labels[i]);
    format!(
        "{} {} {} {}, {} background, {} fill, {} style",
        SIZE.values[size],
        COLOUR.values[colour],
        SHAPE.values[shape],
        POSITION.values[position],
        BACKGROUND.values[background],
        PATTERN.values[pattern],
        STYLE.values[style]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_say_what_the_concept_does_not() {
        let sets = bundled();
        let scene = sets[3].scenes(5, 1)[0];
        assert_eq!(
            caption(Kind::Style, &scene),
            "a large green triangle at the top left on a red background"
        );
        assert_eq!(
            caption(Kind::Object, &scene),
            "at the top left on a red background"
        );
    }

    #[test]
    fn every_concept_set_shows_its_identity_in_distinct_pictures() {
        for c in bundled() {
            let scenes = c.scenes(5, 11);
            assert_eq!(scenes.len(), 5);
            for (i, s) in scenes.iter().enumerate() {
                assert!(
                    c.shown_in(&s.labels()),
                    "{}: {}",
                    c.name,
                    describe(&s.labels())
                );
                assert!(s.is_visible());
                assert!(scenes[..i].iter().all(|o| o.labels() != s.labels()));
            }
            let caption = caption(c.kind, &scenes[0]);
            let named_identity = c.identity.iter().any(|(_, v)| caption.contains(v));
            assert!(!named_identity, "{}: {caption}", c.name);
            for e in &c.edits {
                for &p in &e.asks {
                    resolve(p);
                }
                assert!(e.template.contains("{}"));
            }
        }
    }
}
