"""Chest X-rays: CheXpert and ChestX-ray14 assembled (the seed's tables), Example II, COVIDx.

D0 = CheXpert annotating {Cardiomegaly, Pneumonia, Atelectasis, Edema}, D1 = ChestX-ray14
annotating {Effusion, Consolidation, Pneumothorax}; each class is tested on its own dataset's
test split (CheXpert: valid.csv; ChestX-ray14: test_list.txt), classes a dataset does not
annotate are skipped there, not scored. DenseNet-121, 256 px grayscale, Adam 2e-4, batch 16.

  python -m dassemble_jax.main --config=configs/chestxray_assemble.py:D0+D1 --workdir=/tmp/cxr \
      --config.data.chexpert_root=/data/CheXpert-v1.0 --config.data.nih_root=/data/ChestX-ray14
  python -m dassemble_jax.main --config=configs/chestxray_assemble.py:semi --workdir=/tmp/semi \
      --config.data.chexpert_root=/data/CheXpert-v1.0 --config.data.nih_root=/data/ChestX-ray14
  python -m dassemble_jax.main --config=configs/chestxray_assemble.py:nodule+Mass \
      --workdir=/tmp/nm --config.data.nih_root=/data/ChestX-ray14
  python -m dassemble_jax.main --config=configs/chestxray_assemble.py:covid --workdir=/tmp/cov \
      --config.data.covidx_root=/data/COVIDx --config.data.nih_root=/data/ChestX-ray14
  python -m dassemble_jax.main --config=configs/chestxray_assemble.py:D0+D1,tiny ...  (seconds)

Settings: D0, D1, D0+D1; overlap_D0, overlap_D1, partial, semi, full (the overlapping table:
D0 labels Cardiomegaly, Pneumonia, Atelectasis, Edema, Effusion; D1 Atelectasis, Edema,
Effusion, Consolidation, Pneumothorax; full: both label all seven); nodule and nodule+<finding>
(Example II, e.g. nodule+Mass, nodule+Pleural_Thickening); covid_only, covid (COVIDx with
ChestX-ray14's 14 findings). Every one takes ',tiny'. Useful overrides:
--config.data.image_size=224, --config.data.uncertainty=zeros|ones, --config.data.view=all,
--config.data.synonyms='("nih:Nodule=Lung Lesion",)', --config.compute_dtype=float32 (CPU).
"""

from dassemble_jax.classification import experiments


def get_config(arg: str | None = None):
  # The settings live in the package (dassemble_jax/classification/experiments.py), so the
  # conversion command and the notebooks build the same configs without this folder.
  return experiments.chestxray_assemble(arg)
