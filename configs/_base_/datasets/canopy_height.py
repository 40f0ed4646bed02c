# Canopy-height tiles for inference / evaluation (CHMv2). Layout:
#   data/canopy_height/test.txt       one "rgb_path chm_path" line per tile, paths relative
#                                     to data/canopy_height (a third field is ignored)
#   data/canopy_height/<rgb_path>     3-band 8-bit RGB image (PNG / JPEG / GeoTIFF)
#   data/canopy_height/<chm_path>     single-channel 16-bit PNG of the same size: canopy
#                                     height in centimetres (height_m * 100), 0 = no data
# The BTS-style list reader of the NYU dataset is used with these units (depth_scale=100,
# heights up to the CHMv2 maximum of 96 m); nothing NYU-specific is applied. Ground pixels
# (height 0) cannot be told from "no data" in this encoding, so the metric scores canopy
# pixels (height > min_depth) only.
dataset_type = 'dino_mm.NYUDepthDataset'
data_root = 'data/canopy_height'
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
             'scale_factor', 'flip', 'flip_direction')
test_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),  # BGR; the data preprocessor converts to RGB
    dict(type='dino_mm.LoadDepthMap'),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='test.txt',
                 depth_scale=100.0, min_depth=1e-3, max_depth=96.0, test_mode=True,
                 pipeline=test_pipeline))
# Depth-style metrics over canopy pixels; RMSE is in metres. Not an official CHMv2
# evaluation (the official repository ships none).
test_evaluator = dict(type='dino_mm.DepthMetric', min_depth=1e-3, max_depth=96.0, crop=None)
test_cfg = dict(type='TestLoop')
