//! Shared by `ls` and `index`: resolve an image and get every layer's
//! index (from the cache or a pass), with progress bars on a terminal.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::RegistryArgs;
use crate::cache::CacheDir;
use crate::cache::space::is_disk_full;
use crate::layer::index::LayerIndex;
use crate::layer::{Origin, ensure_indexes};
use crate::registry::{RegistryClient, ResolvedImage};
use crate::tree::Tree;

#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Cache directory (default: $LAZYPULL_CACHE, else /var/lib/lazypull for root,
    /// else $XDG_CACHE_HOME/lazypull).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    pub fn open(&self) -> anyhow::Result<CacheDir> {
        let root = CacheDir::default_root(self.cache_dir.as_deref())?;
        Ok(CacheDir::open(&root)?)
    }
}

pub struct IndexedImage {
    pub client: RegistryClient,
    pub image: ResolvedImage,
    pub cache: CacheDir,
    pub layers: Vec<(LayerIndex, Origin)>,
}

impl IndexedImage {
    /// Resolves `reference` and loads or builds the index of every layer.
    pub fn load(
        registry: &RegistryArgs,
        cache: &CacheArgs,
        reference: &str,
        span: u64,
    ) -> anyhow::Result<Self> {
        let (client, image) = registry.resolve(reference)?;
        let cache = cache.open()?;
        let bars = Bars::new(&image);
        let layers = std::thread::scope(|scope| {
            // What killed processes left half written (a partial blob can
            // be large) goes, beside this command's own work.
            scope.spawn(|| cache.remove_stale_temps());
            ensure_indexes(&client, &cache, &image.layers, span, &|i, n| bars.set(i, n))
        });
        bars.clear();
        let layers = layers.map_err(|e| {
            if is_disk_full(&e) {
                let why = format!(
                    "no space left in the cache directory {}: free some space (or `lazypull \
                     cache prune`) and try again",
                    cache.root().display()
                );
                anyhow::Error::from(e).context(why)
            } else {
                e.into()
            }
        })?;
        Ok(Self {
            layers,
            client,
            image,
            cache,
        })
    }

    /// The merged tree; an error names the layer by digest.
    pub fn tree(&self) -> anyhow::Result<Tree> {
        Tree::build(
            self.layers
                .iter()
                .map(|(index, _)| index.entries.as_slice()),
        )
        .map_err(|e| {
            let digest = self
                .image
                .layers
                .get(e.layer)
                .map_or_else(|| "?".to_string(), |l| l.digest.to_string());
            anyhow::anyhow!("{e} (layer {} is {digest})", e.layer)
        })
    }
}

/// One progress bar per layer, drawn only when stderr is a terminal.
struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl Bars {
    fn new(image: &ResolvedImage) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bars = image
            .layers
            .iter()
            .map(|layer| {
                let bar = multi.add(ProgressBar::new(layer.size));
                bar.set_style(style.clone());
                bar.set_prefix(layer.digest.hex()[..12].to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            })
            .collect();
        Self {
            _multi: multi,
            bars,
        }
    }

    fn set(&self, layer: usize, bytes: u64) {
        if let Some(bar) = self.bars.get(layer) {
            bar.set_position(bytes);
        }
    }

    fn clear(&self) {
        for bar in &self.bars {
            bar.finish_and_clear();
        }
    }
}
