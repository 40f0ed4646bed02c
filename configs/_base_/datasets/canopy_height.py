# Canopy-height tiles (CHMv2), in the layout of Meta's released canopy-height maps. Layout:
#   data/canopy_height/train.txt, test.txt  one "rgb_path chm_path" line per tile, paths
#                                           relative to data/canopy_height (a third field
#                                           is ignored)
#   data/canopy_height/<rgb_path>  3-band 8-bit RGB tile (GeoTIFF, PNG or JPEG)
#   data/canopy_height/<chm_path>  GeoTIFF of the same size: band 1 = canopy height above
#                                  ground in metres (any numeric type), GDAL_NODATA and the
#                                  internal mask band (e.g. cloud flag) mark pixels without
#                                  ground truth. A 16-bit PNG works too: set depth_scale to
#                                  its value per metre (100 for cm); there 0 means "no data".
# tools/dataset_converters/make_canopy_tiles.py cuts aligned RGB / height GeoTIFF scenes
# into this layout.
# Bare ground (0 m) is a scored pixel: dino_mm.LoadCanopyHeightMap stores it as 1 mm (the
# smallest CHMv2 height) because 0 means "no data" to the depth losses and the padding.
dataset_type = 'dino_mm.CanopyHeightDataset'
data_root = 'data/canopy_height'
# Training crops of 256 x 256, the tile size of Meta's canopy-height evaluation (NEON); both
# flips, as aerial / satellite tiles have no up or left. A dino_mm choice: the CHMv2 training
# code is not published.
crop_size = (256, 256)
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
             'scale_factor', 'flip', 'flip_direction')
train_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),  # BGR; the data preprocessor converts to RGB
    dict(type='dino_mm.LoadCanopyHeightMap'),
    dict(type='mmseg.RandomCrop', crop_size=crop_size),
    dict(type='mmseg.RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadCanopyHeightMap'),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='train.txt',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='test.txt', test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
# MAE / RMSE / bias (m), R² per pixel and R² of 50 px block means after a 3 px border: the
# metrics of Meta's canopy-height evaluation (HighResCanopyHeight inference.py, NEON test).
val_evaluator = dict(type='dino_mm.CanopyHeightMetric', block=50, border=3)
test_evaluator = val_evaluator
