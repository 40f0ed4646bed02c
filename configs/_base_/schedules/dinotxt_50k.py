# The official dino.txt optimisation: AdamW(lr 7e-4, betas (0.9, 0.99), eps 1e-8, weight
# decay 1e-4 except on 1-D parameters -- biases, norms, LayerScale, logit_scale), linear
# warm-up from 0 over 2,000 iterations then cosine decay to 0 at 50,000, no gradient
# clipping. The leaf configs checkpoint every 500 iterations (5 kept, as the official loop);
# only the heads and the text tower are written (the frozen backbone is not).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=7e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-4),
    paramwise_cfg=dict(flat_decay_mult=0.0))
max_iters = 50000
warmup_iters = 2000
# The official linear_warmup_cosine_decay(start 0, peak lr, end 0): DINOv3's schedule family
# ('v2'); MMEngine's LinearLR cannot start from 0 (it scales the previous value).
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=7e-4,
         final_value=0.0, total_iters=max_iters, warmup_iters=warmup_iters,
         start_warmup_value=0.0, schedule_version='v2', by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
val_cfg = None
val_dataloader = None
val_evaluator = None
