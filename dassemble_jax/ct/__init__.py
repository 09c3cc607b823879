"""3D CT data for the Universal Model: taxonomy, dataset mappings, conversion, phantom, pipeline.

  taxonomy        the 32 universal classes, pairs, tumor hosts
  bitmask         a voxel's classes as one int: pack/unpack (NumPy and jax), per-class boxes
  datasets        each public dataset's label mapping (data), `validate`, `register`
  nifti_io        NIfTI load/save (atomic), reorientation to RAS
  dicom_io        DICOM CT series (folder or zip) -> volume + RAS affine, bad series refused
  scan_input      finds, names and loads input scans: NIfTI files, DICOM series, zips
  dicom_seg       a label map as a DICOM-SEG referencing its source series (highdicom)
  label_tables    the class names and colours of label maps for viewers (Slicer, ITK-SNAP, JSON)
  resample        resampling to a spacing and back to the original grid (conversion, prediction)
  preprocess      HU window, label mapping (host organs, left/right split), body crop
  layouts         finding (image, label) pairs in each dataset's own folder layout
  convert         the conversion command (python -m dassemble_jax.ct.convert)
  phantom         a procedural abdomen CT emitting several partially labelled sources
  crop_pipeline   the Grain pipeline over the shards (host side: crop centres, windows)
  volume_augment  jitted on-device crop jitter, rotation, zoom, intensity shift, label unpacking
"""
