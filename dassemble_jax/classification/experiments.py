"""The classification experiments: one training recipe and the settings of each family.

`configs/mnist_*.py` and `configs/cifar_assemble.py` are thin `get_config` wrappers around the
functions here, so the package alone (the tables job, the notebooks, an installed wheel) can build
every setting without the repository's `configs/`. Every family starts from the same documented
recipe (`classification_config`) and states only what differs; `setting[,tiny]` picks a column.
"""

from __future__ import annotations

import ml_collections

from dassemble_jax.classification import semisup


def classification_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, step rngs and epoch order
  # --- data: what is assembled (changing any of these re-converts into a fresh workdir) ---
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "mnist"        # 'mnist' | 'cifar10'
  # mnist: 'auto' | 'idx' | 'hub' | 'tfds'; cifar10: 'auto' | 'pickle' | 'tfds'
  c.data.source = "auto"
  c.data.path = ml_collections.config_dict.placeholder(str)  # IDX / pickle folder, if any
  c.data.label_space = tuple("0123456789")  # assembled classes, in output order
  c.data.sources = ()             # list of dicts: name, classes, members, num_train, num_validation
  c.data.exclusive = False        # True: a known positive implies negatives for all other classes
  c.data.test_labels = tuple(range(10))     # raw labels of the test images (all classes known)
  c.data.seed = 0                 # which examples each source draws
  c.data.num_shards = 2           # ArrayRecord shards per split
  # --- input ---
  c.input_mode = "resident"       # 'resident': data on device, epochs in lax.scan; 'grain': stream
  # Resident epochs: 'scan' (one compiled call per epoch), 'loop' (jitted step per batch), or
  # 'auto': loop on CPU, where XLA runs while-loop bodies ~10x slower, scan on GPU/TPU.
  c.epoch_mode = "auto"
  c.grain_workers = 0             # Grain worker processes (input_mode='grain')
  c.augment = "translate"         # on-device: 'none' | 'translate' | 'flip_translate'
  # --- model ---
  c.model = ml_collections.ConfigDict()
  c.model.arch = "resnet"         # 'resnet' | 'airbench' (airbench94's net; 32x32x3 only)
  c.model.widths = (8, 16, 32)    # ResNet stages / airbench conv groups (small subsets: narrow)
  c.model.blocks_per_stage = 1
  c.model.norm = "batch"          # 'batch' | 'group' (stateless; used by the tiny variants)
  c.compute_dtype = "float32"     # 'bfloat16' on accelerators
  # --- optimisation ---
  # Global; must divide by the device count. Small: subsets of a few hundred images per source
  # need many steps more than large batches (500 images -> 31 steps per epoch).
  c.batch_size = 16
  c.eval_batch_size = 512
  c.num_epochs = 12
  c.learning_rate = 2e-3
  c.warmup_fraction = 0.05        # of all steps; then cosine decay to 1% of the peak
  c.weight_decay = 5e-4
  c.grad_clip_norm = 1.0
  return c


def source(name: str, classes, num_train: int, num_validation: int, members=None) -> dict:
  """One source entry: `members` are the raw labels of its images (default: its classes)."""
  return {"name": name, "classes": tuple(str(c) for c in classes),
          "members": tuple(members) if members is not None else None,
          "num_train": num_train, "num_validation": num_validation}


def parse_arg(arg: str | None, settings, default: str) -> tuple[str, bool]:
  """'D0+D1,tiny' -> ('D0+D1', True); 'tiny' -> (default, True)."""
  parts = [p for p in (arg or "").split(",") if p]
  tiny = "tiny" in parts
  rest = [p for p in parts if p != "tiny"]
  setting = rest[0] if rest else default
  if setting not in settings or len(rest) > 1:
    raise ValueError(f"config argument {arg!r}: expected one of {list(settings)}, "
                     "optionally followed by ',tiny'")
  return setting, tiny


def make_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same code path in seconds on a CPU: few images, a narrow net, two epochs."""
  c.data.sources = tuple(dict(s, num_train=min(s["num_train"], 48),
                              num_validation=min(s["num_validation"], 24))
                         for s in c.data.sources)
  c.model.widths = (8, 16)
  # Two short epochs leave BatchNorm's running averages far from the batch statistics.
  c.model.norm = "group"
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 2
  return c


# ------------------------------------------------------------------------------------------------
# MNIST, strictly non-overlapping sources: D0 = odd digits, D1 = even digits.

ODD, EVEN = (1, 3, 5, 7, 9), (0, 2, 4, 6, 8)
# Per-source subset: 500 training + 250 validation images. Small on purpose: with all 30k
# images per source every setting saturates near 100% AUC and the effect under study vanishes.
ODD_EVEN_TRAIN, ODD_EVEN_VAL = 500, 250


def mnist_odd_even(arg: str | None = None) -> ml_collections.ConfigDict:
  """Settings D0 (odd digits; outputs 1,3,5,7,9), D1 (even), D0+D1 (assembled, 10 outputs)."""
  setting, tiny = parse_arg(arg, ("D0", "D1", "D0+D1"), "D0+D1")
  c = classification_config()
  d0 = source("D0", ODD, ODD_EVEN_TRAIN, ODD_EVEN_VAL)
  d1 = source("D1", EVEN, ODD_EVEN_TRAIN, ODD_EVEN_VAL)
  c.data.sources = {"D0": (d0,), "D1": (d1,), "D0+D1": (d0, d1)}[setting]
  c.data.label_space = tuple(str(x) for s in c.data.sources for x in s["classes"])
  c.data.test_labels = tuple(range(10))
  return make_tiny(c) if tiny else c


# ------------------------------------------------------------------------------------------------
# MNIST, overlapping sources: D0 annotates {1,2,3,4,5}, D1 {3,4,5,6,7}.

OVERLAP_D0, OVERLAP_D1 = (1, 2, 3, 4, 5), (3, 4, 5, 6, 7)
OVERLAP_ALL = tuple(range(1, 8))
# Small subsets, as the seed's low AUCs suggest: 300 training + 200 validation images per source.
OVERLAP_TRAIN, OVERLAP_VAL = 300, 200
OVERLAP_SETTINGS = ("D0", "D1", "partial", "semi", "full")


def mnist_overlap(arg: str | None = None) -> ml_collections.ConfigDict:
  """Settings D0, D1, partial (D0+D1 with partial labels), semi (partial + the semi-supervised
  terms on the unknown entries), full (every one of the 7 classes annotated: the upper bound)."""
  setting, tiny = parse_arg(arg, OVERLAP_SETTINGS, "partial")
  c = classification_config()
  full = setting == "full"
  d0 = source("D0", OVERLAP_ALL if full else OVERLAP_D0, OVERLAP_TRAIN, OVERLAP_VAL,
              members=OVERLAP_D0)
  d1 = source("D1", OVERLAP_ALL if full else OVERLAP_D1, OVERLAP_TRAIN, OVERLAP_VAL,
              members=OVERLAP_D1)
  c.data.sources = {"D0": (d0,), "D1": (d1,)}.get(setting, (d0, d1))
  c.data.label_space = tuple(str(d) for d in OVERLAP_ALL if any(
      str(d) in s["classes"] for s in c.data.sources))
  c.data.test_labels = OVERLAP_ALL
  # Every setting carries the section, so all columns of the table share one recipe but the flag.
  c.semisup = semisup.default_config()
  c.semisup.enabled = setting == "semi"
  # The extra terms start at 0 and reach full weight after the first quarter of training,
  # counted in steps over the 600 training images of the two full-size sources. References:
  # an override of num_epochs or batch_size (the tiny variant, the tables) moves it along.
  c.semisup.rampup_steps = (c.get_ref("num_epochs") * (2 * OVERLAP_TRAIN)
                            // c.get_ref("batch_size") // 4)
  return make_tiny(c) if tiny else c


# ------------------------------------------------------------------------------------------------
# MNIST-zero vs MNIST: the same images, labelled "0 vs not-0" or with all ten digits.

DIGITS = tuple(range(10))
ZERO_TRAIN, ZERO_VAL = 1000, 500


def mnist_zero(arg: str | None = None) -> ml_collections.ConfigDict:
  """Settings zero (one output "0"; other digits negatives of unknown identity), all (ten)."""
  setting, tiny = parse_arg(arg, ("zero", "all"), "zero")
  c = classification_config()
  classes = ("0",) if setting == "zero" else tuple(str(d) for d in DIGITS)
  c.data.sources = (source("MNIST-zero" if setting == "zero" else "MNIST", classes,
                           ZERO_TRAIN, ZERO_VAL, members=DIGITS),)
  c.data.label_space = classes
  c.data.test_labels = DIGITS
  return make_tiny(c) if tiny else c


# ------------------------------------------------------------------------------------------------
# CIFAR-10 assembled from animals (D0) and vehicles (D1), and a fast fully labelled recipe.

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")
# Per-source subset of the assembly table: 5,000 training + 1,000 validation images.
CIFAR_TRAIN, CIFAR_VAL = 5000, 1000


def _cifar_members(names):
  return tuple(CIFAR_CLASSES.index(n) for n in names)


def cifar_assemble(arg: str | None = None) -> ml_collections.ConfigDict:
  """Settings D0, D1, D0+D1 (the assembly table) and full (all 45,000 training images, all
  ten classes labelled, airbench94's network: the fast recipe)."""
  setting, tiny = parse_arg(arg, ("D0", "D1", "D0+D1", "full"), "D0+D1")
  c = classification_config()
  c.data.dataset = "cifar10"
  c.data.source = "auto"
  d0 = source("D0", ANIMALS, CIFAR_TRAIN, CIFAR_VAL, members=_cifar_members(ANIMALS))
  d1 = source("D1", VEHICLES, CIFAR_TRAIN, CIFAR_VAL, members=_cifar_members(VEHICLES))
  # -1: every training (45,000) and validation (5,000) image of the pickles.
  every = source("CIFAR-10", CIFAR_CLASSES, -1, -1, members=tuple(range(10)))
  c.data.sources = {"D0": (d0,), "D1": (d1,), "D0+D1": (d0, d1), "full": (every,)}[setting]
  c.data.label_space = tuple(n for n in CIFAR_CLASSES
                             if any(n in s["classes"] for s in c.data.sources))
  c.data.test_labels = tuple(range(10))
  c.augment = "flip_translate"
  c.model.widths = (64, 128, 256)
  c.model.norm = "batch"
  if setting == "full":
    # airbench94's network (~236 MFLOP forward per image, 0.6x the ResNet's 389); the assembly
    # settings keep the ResNet, so their recorded results stay valid.
    c.model.arch = "airbench"
    c.model.widths = (64, 256, 256)
  # bfloat16 compute on accelerators (parameters stay float32); set 'float32' on a CPU.
  c.compute_dtype = "bfloat16"
  # airbench's batch for the fast recipe (0.18 s vs 0.21 s per epoch at 512 on an H100).
  c.batch_size = 1024 if setting == "full" else 512
  c.eval_batch_size = 1000
  c.num_epochs = 10 if setting == "full" else 20
  c.learning_rate = 4e-3
  c.warmup_fraction = 0.1
  if tiny:
    c = make_tiny(c)
    c.data.sources = tuple(dict(s, num_train=48, num_validation=24) for s in c.data.sources)
    c.compute_dtype = "float32"
    if setting == "full":
      c.model.widths = (8, 16, 16)  # airbench has exactly three conv groups
      c.model.norm = "batch"        # its only norm; momentum 0.6 settles within the few steps
  return c


# ------------------------------------------------------------------------------------------------
# Chest X-rays: CheXpert (D0) and ChestX-ray14 (D1) assembled, Example II, COVIDx.

# The seed's first table: D0 = CheXpert annotating four diseases, D1 = ChestX-ray14 three others.
CXR_D0 = ("Cardiomegaly", "Pneumonia", "Atelectasis", "Edema")
CXR_D1 = ("Effusion", "Consolidation", "Pneumothorax")
# The overlapping table (our choice, as MNIST's {1..5} / {3..7}; the seed does not list its
# classes): both datasets label all seven, D0 is given five and D1 five, three shared.
CXR_ALL = CXR_D0 + CXR_D1
CXR_OVERLAP_D0 = ("Cardiomegaly", "Pneumonia", "Atelectasis", "Edema", "Effusion")
CXR_OVERLAP_D1 = ("Atelectasis", "Edema", "Effusion", "Consolidation", "Pneumothorax")
# ChestX-ray14's 14 findings under their shared names (chestxray/label_space.py).
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                "Pleural Thickening", "Hernia")
NODULE_SETTINGS = ("nodule",) + tuple(
    "nodule+" + c.replace(" ", "_") for c in NIH_FINDINGS if c != "Nodule")
CHESTXRAY_SETTINGS = ("D0", "D1", "D0+D1", "overlap_D0", "overlap_D1", "partial", "semi",
                      "full") + NODULE_SETTINGS + ("covid_only", "covid")


def cxr_source(name: str, dataset: str, classes, num_train: int = -1,
               num_validation: int = -1, num_test: int = -1) -> dict:
  """One chest X-ray source: a dataset ('nih' | 'chexpert' | 'covidx') and the shared classes
  it annotates; -1 takes every image of its split."""
  return {"name": name, "dataset": dataset, "classes": tuple(classes), "num_train": num_train,
          "num_validation": num_validation, "num_test": num_test}


def chestxray_config() -> ml_collections.ConfigDict:
  """The chest X-ray recipe: the anchor's (DenseNet-121, Adam 2e-4, batch 16, 256 px)."""
  c = classification_config()
  c.data.dataset = "chestxray"
  # The datasets' folders, in their published layouts (None: a source needing it is an error).
  c.data.nih_root = ml_collections.config_dict.placeholder(str)       # ChestX-ray14
  c.data.chexpert_root = ml_collections.config_dict.placeholder(str)  # CheXpert-v1.0[-small]
  c.data.covidx_root = ml_collections.config_dict.placeholder(str)    # COVIDx CXR
  c.data.image_size = 256         # square, grayscale, anti-aliased (the anchor: 256; 224 also)
  c.data.uncertainty = "ignore"   # CheXpert -1: 'ignore' (unknown) | 'zeros' | 'ones'
  c.data.blank = "negative"       # CheXpert blank: 'negative' | 'unknown'
  c.data.view = "frontal"         # 'frontal' | 'lateral' | 'all' (CheXpert; NIH is all frontal)
  c.data.synonyms = ()            # overrides, e.g. ('nih:Nodule=Lung Lesion',)
  c.data.validation_fraction = 0.1  # of the training pool's patients
  c.data.test_fraction = 0.2      # patients tested when a dataset ships no test split
  c.data.num_shards = 16
  c.data.workers = 8              # threads decoding and resizing images (conversion only)
  c.input_mode = "grain"          # too large to keep on the device
  c.grain_workers = 4
  c.augment = "translate"         # no flips: the heart is on the left
  c.model.arch = "densenet"
  c.model.growth_rate = 32        # DenseNet-121
  c.model.block_config = (6, 12, 24, 16)
  c.model.num_init_features = 64
  c.model.bn_size = 4
  c.model.norm = "batch"
  c.compute_dtype = "bfloat16"    # accelerators; 'float32' on a CPU
  c.batch_size = 16
  c.eval_batch_size = 64
  # The anchor: Adam 2e-4 halved every 3 epochs for 64 epochs, i.e. under 1% of the peak after
  # epoch 21; here Adam (no weight decay) under the project's warm-up + cosine, 16 epochs.
  c.learning_rate = 2e-4
  c.weight_decay = 0.0
  c.warmup_fraction = 0.02
  c.num_epochs = 16
  c.semisup = semisup.default_config()
  c.semisup.strong_pad = 16       # translation of the strong view at 256 px
  c.semisup.rampup_steps = 2000
  return c


def chestxray_assemble(arg: str | None = None) -> ml_collections.ConfigDict:
  """The seed's chest X-ray settings. D0 (CheXpert: Cardiomegaly, Pneumonia, Atelectasis,
  Edema), D1 (ChestX-ray14: Effusion, Consolidation, Pneumothorax), D0+D1; the overlapping
  table: overlap_D0, overlap_D1, partial, semi (+ pseudo labels and consistency on the unknown
  entries), full (both label all seven); Example II: nodule, nodule+<finding> (ChestX-ray14
  images, Nodule plus one other finding's labels); covid_only (COVIDx), covid (COVIDx +
  ChestX-ray14's 14 findings)."""
  setting, tiny = parse_arg(arg, CHESTXRAY_SETTINGS, "D0+D1")
  c = chestxray_config()
  if setting in ("D0", "D1", "D0+D1"):
    d0 = cxr_source("D0", "chexpert", CXR_D0)
    d1 = cxr_source("D1", "nih", CXR_D1)
    sources = {"D0": (d0,), "D1": (d1,), "D0+D1": (d0, d1)}[setting]
    order = CXR_ALL
  elif setting in ("overlap_D0", "overlap_D1", "partial", "semi", "full"):
    full = setting == "full"
    d0 = cxr_source("D0", "chexpert", CXR_ALL if full else CXR_OVERLAP_D0)
    d1 = cxr_source("D1", "nih", CXR_ALL if full else CXR_OVERLAP_D1)
    sources = {"overlap_D0": (d0,), "overlap_D1": (d1,)}.get(setting, (d0, d1))
    order = CXR_ALL
  elif setting in NODULE_SETTINGS:
    other = setting.partition("+")[2].replace("_", " ")
    sources = (cxr_source("ChestX-ray14", "nih", ("Nodule", other) if other else ("Nodule",)),)
    order = ("Nodule",) + tuple(n for n in NIH_FINDINGS if n != "Nodule")
  else:
    covid = cxr_source("COVIDx", "covidx", ("COVID-19",))
    sources = (covid,) if setting == "covid_only" else (
        covid, cxr_source("ChestX-ray14", "nih", NIH_FINDINGS))
    order = ("COVID-19",) + NIH_FINDINGS
  c.data.sources = sources
  c.data.label_space = tuple(n for n in order if any(n in s["classes"] for s in sources))
  c.semisup.enabled = setting == "semi"
  if tiny:
    # The same code path in seconds on a CPU: a few images, 32 px, a two-block DenseNet.
    cap = lambda n, k: k if n < 0 else min(n, k)  # -1 (all) -> k
    c.data.sources = tuple(dict(s, num_train=cap(s["num_train"], 48),
                                num_validation=cap(s["num_validation"], 24),
                                num_test=cap(s["num_test"], 24))
                           for s in c.data.sources)
    c.data.image_size = 32
    c.data.num_shards = 2
    c.data.workers = 2
    c.grain_workers = 0
    c.model.growth_rate, c.model.block_config = 8, (2, 2)
    c.model.num_init_features, c.model.bn_size = 16, 2
    c.model.norm = "group"        # no running averages to settle in two short epochs
    c.compute_dtype = "float32"
    c.eval_batch_size = 16
    c.learning_rate = 2e-3
    c.num_epochs = 2
    c.semisup.strong_pad = 2
    c.semisup.rampup_steps = 2
  return c
