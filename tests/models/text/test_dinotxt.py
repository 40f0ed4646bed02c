"""dino.txt models: parity with open_clip's text transformer, the official key manifest,
the CLIP loss (single process and 2 gloo ranks), the checkpoint policy and bad input.

Oracles: open_clip's ``TextTransformer`` (the same CLIP text architecture, independent
code) fed the converted weights; the CLIP loss written from its definition in float64.
"""
import math
import os.path as osp

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dino_mm.models.losses import clip_loss
from dino_mm.models.text import DINOTxt, TextTransformer
from dino_mm.models.text.towers import TextTower
from tests.oracles import require

open_clip = require('open_clip')

# ---------------------------------------------------------------------------------------
# The official key layout, recorded as facts from the official module definitions
# (dinov3/eval/text/{dinotxt_model,vision_tower,text_tower,text_transformer}.py,
# dinov3/layers/{block,attention,ffn_layers}.py; dinov2/hub/text/*): name -> shape.
# ViT-L: width 1024, 16 heads; head blocks: SelfAttentionBlock(qkv_bias=False,
# init_values=1e-5, SwiGLU aligned to 64 -> hidden int(4096 * 2 / 3) = 2730 -> 2752);
# text tower tet1280d20h24l: width 1280, 20 heads, 24 layers, MLP 5120, context 77,
# vocab 49408; text projection 1280 -> 2048 without bias.
# ---------------------------------------------------------------------------------------


def official_dinotxt_manifest(release='dinov3', vision_dim=1024, text_dim=1280, text_layers=24,
                              embed=2048, vocab=49408, context=77, swiglu=2752):
    blocks = 'blocks' if release == 'dinov3' else 'block_list'
    keys = {}
    for i in range(2):
        p = f'visual_model.head.{blocks}.{i}.'
        keys.update({
            p + 'norm1.weight': (vision_dim, ), p + 'norm1.bias': (vision_dim, ),
            p + 'attn.qkv.weight': (3 * vision_dim, vision_dim),
            p + 'attn.proj.weight': (vision_dim, vision_dim), p + 'attn.proj.bias': (vision_dim, ),
            p + 'ls1.gamma': (vision_dim, ),
            p + 'norm2.weight': (vision_dim, ), p + 'norm2.bias': (vision_dim, ),
            p + 'mlp.w1.weight': (swiglu, vision_dim), p + 'mlp.w1.bias': (swiglu, ),
            p + 'mlp.w2.weight': (swiglu, vision_dim), p + 'mlp.w2.bias': (swiglu, ),
            p + 'mlp.w3.weight': (vision_dim, swiglu), p + 'mlp.w3.bias': (vision_dim, ),
            p + 'ls2.gamma': (vision_dim, ),
        })
    keys['visual_model.head.ln_final.weight'] = (vision_dim, )
    keys['visual_model.head.ln_final.bias'] = (vision_dim, )
    t = 'text_model.backbone.'
    keys[t + 'token_embedding.weight'] = (vocab, text_dim)
    keys[t + 'positional_embedding'] = (context, text_dim)
    for i in range(text_layers):
        p = f'{t}blocks.{i}.'
        keys.update({
            p + 'attention_norm.weight': (text_dim, ), p + 'attention_norm.bias': (text_dim, ),
            p + 'attention.qkv.weight': (3 * text_dim, text_dim),
            p + 'attention.proj.weight': (text_dim, text_dim),
            p + 'attention.proj.bias': (text_dim, ),
            p + 'ffn_norm.weight': (text_dim, ), p + 'ffn_norm.bias': (text_dim, ),
            p + 'feed_forward.fc1.weight': (4 * text_dim, text_dim),
            p + 'feed_forward.fc1.bias': (4 * text_dim, ),
            p + 'feed_forward.fc2.weight': (text_dim, 4 * text_dim),
            p + 'feed_forward.fc2.bias': (text_dim, ),
        })
    keys[t + 'ln_final.weight'] = (text_dim, )
    keys[t + 'ln_final.bias'] = (text_dim, )
    keys['text_model.head.linear_projection.weight'] = (embed, text_dim)
    keys['logit_scale'] = (1, )
    return keys


def random_state(manifest, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in manifest.items()}


def tiny_model(**kw):
    cfg = dict(
        vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
                             patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
                             block_chunks=0, layerscale_init=1.0, num_register_tokens=2),
        text_backbone=dict(type='dino_mm.TextTransformer', context_length=16, dim=32,
                           num_heads=2, num_layers=2),
        embed_dim=64, vision=dict(head_drop_path=0.0))
    cfg.update(kw)
    return DINOTxt(**cfg)


# ---------------------------------------------------------------- text tower vs open_clip
def to_open_clip(tower: TextTower) -> dict:
    """dino_mm / official text-tower keys -> open_clip ``TextTransformer`` keys."""
    sd = tower.state_dict()
    out = {'token_embedding.weight': sd['backbone.token_embedding.weight'],
           'positional_embedding': sd['backbone.positional_embedding'],
           'ln_final.weight': sd['backbone.ln_final.weight'],
           'ln_final.bias': sd['backbone.ln_final.bias'],
           'text_projection': sd['head.linear_projection.weight'].t().contiguous()}
    for i in range(len(tower.backbone.blocks)):
        s, d = f'backbone.blocks.{i}.', f'transformer.resblocks.{i}.'
        qkv = sd[s + 'attention.qkv.weight']
        out.update({
            d + 'ln_1.weight': sd[s + 'attention_norm.weight'],
            d + 'ln_1.bias': sd[s + 'attention_norm.bias'],
            d + 'attn.in_proj_weight': qkv,
            d + 'attn.in_proj_bias': torch.zeros(qkv.shape[0]),  # the official qkv has none
            d + 'attn.out_proj.weight': sd[s + 'attention.proj.weight'],
            d + 'attn.out_proj.bias': sd[s + 'attention.proj.bias'],
            d + 'ln_2.weight': sd[s + 'ffn_norm.weight'],
            d + 'ln_2.bias': sd[s + 'ffn_norm.bias'],
            d + 'mlp.c_fc.weight': sd[s + 'feed_forward.fc1.weight'],
            d + 'mlp.c_fc.bias': sd[s + 'feed_forward.fc1.bias'],
            d + 'mlp.c_proj.weight': sd[s + 'feed_forward.fc2.weight'],
            d + 'mlp.c_proj.bias': sd[s + 'feed_forward.fc2.bias'],
        })
    return out


def test_text_tower_equals_open_clip():
    from open_clip.transformer import TextTransformer as OCTextTransformer
    torch.manual_seed(0)
    ctx, vocab, width, heads, layers, embed = 20, 500, 48, 4, 3, 40
    backbone = TextTransformer(context_length=ctx, vocab_size=vocab, dim=width, num_heads=heads,
                               num_layers=layers)
    tower = TextTower(backbone, embed).eval()
    with torch.no_grad():  # non-trivial norms and biases everywhere
        for name, p in tower.named_parameters():
            if 'norm' in name or 'ln_final' in name or name.endswith('bias'):
                p.add_(torch.randn_like(p) * 0.1)
    oracle = OCTextTransformer(context_length=ctx, vocab_size=vocab, width=width, heads=heads,
                               layers=layers, output_dim=embed, act_layer=nn.GELU,
                               pool_type='argmax', proj_bias=False).eval()
    oracle.load_state_dict(to_open_clip(tower), strict=True)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.zeros(5, ctx, dtype=torch.long)
    for row, n in enumerate((3, 7, 12, 19, 20)):  # the eot (largest id) ends each text
        tokens[row, :n] = torch.randint(1, vocab - 1, (n, ), generator=gen)
        tokens[row, n - 1] = vocab - 1
    with torch.no_grad():
        ours, ref = tower(tokens), oracle(tokens)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # and the causal mask matters: a non-causal tower differs
    for block in backbone.blocks:
        block.is_causal = False
    with torch.no_grad():
        assert not torch.allclose(tower(tokens), ref, atol=1e-3)


def test_text_longer_than_context_is_refused_by_the_tower():
    tower = TextTransformer(context_length=8, vocab_size=100, dim=16, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match='exceed the text context of 8'):
        tower(torch.ones(1, 9, dtype=torch.long))


def test_long_caption_is_truncated_like_the_official_tokenizer():
    model = tiny_model()
    tokens = model.tokenize(['word ' * 100])
    assert tokens.shape == (1, 16) and int(tokens[0, -1]) == model.tokenizer.eot_token_id
    assert model.encode_text(['word ' * 100]).shape == (1, 64)


# ---------------------------------------------------------------- official manifest
@pytest.mark.parametrize('release', ['dinov3', 'dinov2'])
def test_official_layout_loads_strictly(release):
    text_layers = 2  # official widths, reduced depth for a CPU test
    model = DINOTxt(
        vision_backbone=dict(type='dino_mm.DinoVisionTransformer',
                             arch='dinov3_vitl16' if release == 'dinov3' else 'dinov2_vitl14_reg',
                             depth=2),
        text_backbone=dict(type='dino_mm.TextTransformer', num_layers=text_layers),
        embed_dim=2048, release=release)
    manifest = official_dinotxt_manifest(release, text_layers=text_layers)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest  # the frozen backbone is not part of a saved state dict
    model.mark_backbone_loaded('test backbone')
    result = model.load_state_dict(random_state(manifest), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    size = 32 if release == 'dinov3' else 28
    with torch.no_grad():
        img = model.encode_image(torch.randn(2, 3, size, size), normalize=True)
        txt = model.encode_text(['a photo of a cat', 'a dog'], normalize=True)
    assert img.shape == txt.shape == (2, 2048)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_frozen_backbone_is_not_saved_and_heads_only_needs_a_backbone_source(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    sd = model.state_dict()
    assert not any(k.startswith('visual_model.backbone.') for k in sd)
    assert any(k.startswith('visual_model.head.') for k in sd) and 'logit_scale' in sd
    fresh = tiny_model()
    with pytest.raises(ValueError, match='backbone_checkpoint'):
        fresh.load_state_dict(sd)
    fresh.mark_backbone_loaded('backbone.pth')
    before = {k: v.clone() for k, v in fresh.visual_model.backbone.state_dict().items()}
    fresh.load_state_dict(sd, strict=True)
    for k, v in fresh.visual_model.backbone.state_dict().items():
        assert torch.equal(v, before[k])  # the backbone is kept
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k])
    # save_frozen_backbone writes it, and then no source is needed
    full = tiny_model(save_frozen_backbone=True)
    assert any(k.startswith('visual_model.backbone.') for k in full.state_dict())
    tiny_model(save_frozen_backbone=True).load_state_dict(full.state_dict(), strict=True)


def test_backbone_frozen_and_in_eval_during_training():
    model = tiny_model().train()
    assert not model.visual_model.backbone.training
    assert not any(p.requires_grad for p in model.visual_model.backbone.parameters())
    trainable = {n.split('.')[0] + '.' + n.split('.')[1] for n, p in model.named_parameters()
                 if p.requires_grad and '.' in n}
    assert trainable == {'visual_model.head', 'text_model.backbone', 'text_model.head'}


# ---------------------------------------------------------------- CLIP loss
def ref_clip_loss(img, txt, scale):
    """Definition in float64: mean over pairs of (-log p(text_i | image_i) -
    log p(image_i | text_i)) / 2 with softmax over the whole batch."""
    img, txt = img.double(), txt.double()
    total = 0.0
    n = img.shape[0]
    for i in range(n):
        li = scale * (img[i] @ txt.t())
        lt = scale * (txt[i] @ img.t())
        total = total + (-(li[i] - torch.logsumexp(li, 0)) - (lt[i] - torch.logsumexp(lt, 0))) / 2
    return total / n


def _features(n=8, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=gen), dim=-1),
            F.normalize(torch.randn(n, d, generator=gen), dim=-1))


def test_clip_loss_matches_its_definition():
    img, txt = _features()
    scale = torch.tensor(math.exp(2.0))
    torch.testing.assert_close(clip_loss(img, txt, scale).double(), ref_clip_loss(img, txt, scale),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='same shape|one shape'):
        clip_loss(img, txt[:3], scale)


def _loss_worker(rank, world, init_file, out_file):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                                         world_size=world)
    try:
        torch.set_num_threads(1)
        img, txt = _features()
        b = img.shape[0] // world
        mine_i = img[rank * b:(rank + 1) * b].clone().requires_grad_()
        mine_t = txt[rank * b:(rank + 1) * b].clone().requires_grad_()
        log_scale = torch.tensor(2.0, requires_grad=True)
        loss = clip_loss(mine_i, mine_t, log_scale.exp())
        loss.backward()
        out = [None] * world
        torch.distributed.all_gather_object(out, (loss.detach(), mine_i.grad, mine_t.grad,
                                                  log_scale.grad))
        if rank == 0:
            torch.save(out, out_file)
    finally:
        torch.distributed.destroy_process_group()


def test_clip_loss_two_gloo_ranks_equal_one_process(tmp_path):
    world = 2
    mp.spawn(_loss_worker, args=(world, str(tmp_path / 'pg'), str(tmp_path / 'out.pt')),
             nprocs=world, join=True)
    out = torch.load(tmp_path / 'out.pt')
    img, txt = _features()
    img.requires_grad_()
    txt.requires_grad_()
    log_scale = torch.tensor(2.0, requires_grad=True)
    loss = clip_loss(img, txt, log_scale.exp())
    loss.backward()
    # DDP averages the rank gradients: mean of rank losses and of rank gradients
    torch.testing.assert_close(sum(o[0] for o in out) / world, loss.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([o[1] for o in out]) / world, img.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([o[2] for o in out]) / world, txt.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sum(o[3] for o in out) / world, log_scale.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- model modes
def _samples(captions):
    from mmpretrain.structures import DataSample
    return [DataSample(metainfo=dict(caption=c, img_path=f'img{i}.png'))
            for i, c in enumerate(captions)]


def test_loss_mode_clamps_the_scale_and_learns():
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    images = torch.randn(4, 3, 32, 32)
    samples = _samples(['a cat', 'a dog', 'a digit seven', 'the number two'])
    losses = model(images, samples, mode='loss')
    assert float(model.logit_scale) == pytest.approx(math.log(100))
    assert set(losses) == {'loss_clip', 'logit_scale'}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = float(losses['loss_clip'])
    for _ in range(30):
        opt.zero_grad()
        loss = model(images, samples, mode='loss')['loss_clip']
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


@pytest.mark.parametrize('bad', ['', '   ', None, 3])
def test_missing_or_empty_caption_is_named(bad):
    from mmpretrain.structures import DataSample
    model = tiny_model()
    samples = _samples(['a cat']) + [DataSample(metainfo=dict(img_path='broken.png'))]
    if bad is not None:
        samples[1].set_metainfo(dict(caption=bad))
    with pytest.raises(ValueError, match='broken.png'):
        model(torch.randn(2, 3, 32, 32), samples, mode='loss')


def test_zero_shot_predict_and_bad_class_files(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(zero_shot=dict(class_names=['cat', 'dog', 'bird'], templates='simple'))
    model.eval()
    out = model(torch.randn(3, 3, 32, 32), mode='predict')
    scores = torch.stack([s.pred_score for s in out])
    assert scores.shape == (3, 3)
    torch.testing.assert_close(scores.sum(-1), torch.ones(3))
    # the scores are the softmax of scaled cosines with the prompt-ensembled class embeddings
    with torch.no_grad():
        emb = model.class_text_embeddings(['cat', 'dog', 'bird'], ['a photo of a {}.'])
    assert emb.shape == (3, 64)
    names = tmp_path / 'names.txt'
    names.write_text('cat\ndog\n\nbird\n')
    model.zero_shot['class_names'] = str(names)
    model.train().eval()
    assert len(model(torch.randn(1, 3, 32, 32), mode='predict')[0].pred_score) == 3
    model.zero_shot['class_names'] = str(tmp_path / 'missing.txt')
    model.train().eval()
    with pytest.raises(FileNotFoundError, match='missing.txt'):
        model(torch.randn(1, 3, 32, 32), mode='predict')
    model.zero_shot = dict(class_names=['cat', 'cat'])
    with pytest.raises(ValueError, match='duplicated'):
        model(torch.randn(1, 3, 32, 32), mode='predict')
    model.zero_shot = dict(class_names=['cat'], templates=['no slot'])
    with pytest.raises(ValueError, match='no'):
        model(torch.randn(1, 3, 32, 32), mode='predict')


def test_config_builds_the_release_model_structure():
    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    cfg = Config.fromfile(osp.join(
        root, 'configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions.py'))
    assert cfg.model.embed_dim == 2048 and cfg.model.text_backbone.num_layers == 24
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.99)
    assert cfg.optim_wrapper.paramwise_cfg.flat_decay_mult == 0.0
