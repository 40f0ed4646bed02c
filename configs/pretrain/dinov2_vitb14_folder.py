# DINOv2 ViT-B/14 pretraining on your own folder of images: the ViT-S/14 recipe
# (dinov2_vits14_folder.py: command, data layout, small-data defaults) with a ViT-B/14.
#
#   python tools/train.py configs/pretrain/dinov2_vitb14_folder.py \
#       --cfg-options train_dataloader.dataset.data_root=/path/to/images
#
# Drop path 0.2 (ViT-B); 32 images per GPU fit a 24 GB GPU without --amp.
_base_ = ['./dinov2_vits14_folder.py']
model = dict(backbone=dict(arch='dinov2_vitb14', drop_path_rate=0.2))
