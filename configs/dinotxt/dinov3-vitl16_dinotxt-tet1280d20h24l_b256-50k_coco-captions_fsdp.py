# dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions sharded with FSDP2: MMEngine's
# FlexibleRunner with dino_mm.DINOFSDPStrategy, which takes the FSDP units from
# DINOTxt.fsdp_units() (each text-transformer and vision-head block, then the text tower and
# the vision head, as the official ac_comp_parallelize). Unlike the official code, the frozen
# vision backbone is not sharded: it stays replicated on every GPU (no gradients, so nothing
# to reduce) and computes in fp32; logit_scale stays a replicated fp32 parameter whose
# gradient the strategy averages over ranks.
# Launch (8 GPUs, one node):
#   bash tools/dist_train.sh configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions_fsdp.py 8 \
#       --cfg-options model.backbone_checkpoint=dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth
# or GPUS=8 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION JOB <this config>.
# Checkpoints are DCP folders (iter_N.pth/) holding the heads and the text tower (the frozen
# backbone is not saved and comes back from backbone_checkpoint); resume with --resume on any
# world size, consolidate one with tools/convert/consolidate_sharded.py.
_base_ = ['./dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions.py']
runner_type = 'FlexibleRunner'
strategy = dict(
    type='dino_mm.DINOFSDPStrategy',
    # official param_dtype_str='bf16', reduce_dtype_str='fp32' on every sharded unit; the keys
    # are unit name prefixes (see dino_mm.engine.fsdp.shard_model_units)
    mixed_precision={'text_model': dict(param_dtype='bf16', reduce_dtype='fp32'),
                     'visual_model.head': dict(param_dtype='bf16', reduce_dtype='fp32')},
    # official: every unit frees its gathered weights after the forward pass
    reshard_after_forward=True,
    activation_checkpointing=False,
    dist_timeout=1800)
# The strategy shards the model itself: no DDP wrapper.
model_wrapper_cfg = None
