//! Helpers shared by the trainer tests: the tiny SD1 fixture model, temporary folders with
//! generated images, and parameter snapshots.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use image::{Rgb, RgbImage};
use invert_model::loading::{LoadOptions, StableDiffusion, load};
use invert_train::config::TrainConfig;
use invert_train::data::{ImageSet, LoadImagesOptions, load_image_folder};
use invert_train::trainer::Trainer;

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("invert-train-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tiny_sd1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../invert-model/tests/fixtures/tiny-sd1")
}

pub fn device() -> Device {
    Device::flex().autodiff()
}

pub fn load_tiny_sd1(device: &Device) -> StableDiffusion {
    load(&tiny_sd1(), &LoadOptions::default(), device).expect("tiny-sd1 loads")
}

/// Writes one 64x64 PNG per background colour into `dir/images` and loads them: a red square
/// (200, 30, 30) at rows 16..40, columns 20..44 on the colour (with (90, 120, 200), the "red toy"
/// image of `tests/fixtures/tiny-sd1-conditional`).
pub fn image_folder(dir: &Path, colours: &[[u8; 3]]) -> (PathBuf, ImageSet) {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for (i, c) in colours.iter().enumerate() {
        let mut img = RgbImage::from_pixel(64, 64, Rgb(*c));
        for y in 16..40 {
            for x in 20..44 {
                img.put_pixel(x, y, Rgb([200, 30, 30]));
            }
        }
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    let set = load_image_folder(&folder, &LoadImagesOptions::default()).unwrap();
    (folder, set)
}

/// A short-run configuration on tiny-sd1 writing to `out`.
pub fn config(images: &Path, out: &Path, token: &str, vectors: usize) -> TrainConfig {
    TrainConfig {
        model: tiny_sd1(),
        images: images.to_path_buf(),
        out: out.to_path_buf(),
        token: token.into(),
        vectors,
        steps: 20,
        preview_every: 0,
        save_every: 0,
        ..Default::default()
    }
}

pub fn trainer(config: TrainConfig, images: &ImageSet) -> Trainer {
    let device = device();
    let sd = load_tiny_sd1(&device);
    Trainer::new(config, sd, images, device).expect("trainer")
}

/// Every float parameter of a module as (visit index, shape, bit patterns).
#[derive(Default)]
struct Snapshot {
    out: Vec<(Vec<usize>, Vec<u32>)>,
}

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32");
        self.out
            .push((shape, values.into_iter().map(f32::to_bits).collect()));
    }
}

pub fn snapshot<M: Module>(module: &M) -> Vec<(Vec<usize>, Vec<u32>)> {
    let mut s = Snapshot::default();
    module.visit(&mut s);
    s.out
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// An I64 tensor of a safetensors fixture as values.
pub fn i64s(f: &invert_model::weights::safetensors_file::SafetensorsFile, name: &str) -> Vec<i64> {
    f.read_bytes(name)
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
