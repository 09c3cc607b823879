"""Chest X-ray label assembly: the public datasets in their own layouts, onto one label space.

  label_space  shared class names, each dataset's synonym table, label values -> targets +
               known masks under CheXpert's uncertainty policies (U-Ignore, U-Zeros, U-Ones)
  csv_io       CSV reading with required columns and errors that name the file and row
  nih          ChestX-ray14: Data_Entry_2017*.csv, images*/ folders, the official split lists
  chexpert     CheXpert: train.csv / valid.csv, views, the CheXpert-v1.0 path prefix
  covidx       COVIDx CXR: the split text files
  splits       patient-level splits (no patient in two splits)
  images       decode, centre-crop, anti-aliased resize to the training size (grayscale uint8)
  convert      an assembly of sources -> ArrayRecord shards + manifest (and its command line)

The classification job converts through `classification.prepare` when config.data.dataset is
'chestxray'; the settings are in `classification.experiments` (configs/chestxray_assemble.py).
"""
