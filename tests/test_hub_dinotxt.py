"""dino.txt hub entries through the doors a user takes: ``torch.hub.load(..., source='local')``
and ``dino_mm.hub``; official file names found in ``$DINO_MM_WEIGHTS``, explicit files,
the tri-state ``pretrained`` and the offline errors. Released files are built from the
official key manifest (tests/models/text/test_dinotxt.py) with random values, at official
widths and reduced depth.
"""
import os.path as osp
import warnings

import pytest
import torch

import dino_mm.hub as hub
from dino_mm.models.text import CLIPTokenizer, DINOTxt
from tests.models.text.test_dinotxt import official_dinotxt_manifest, random_state

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
V3 = 'dinov3_vitl16_dinotxt_tet1280d20h24l'
V2 = 'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l'
FILES = {
    V3: ['dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth',
         'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth'],
    V2: ['dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth',
         'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_text_encoder.pth',
         'dinov2_vitl14_reg4_pretrain.pth'],
}
SMALL = dict(depth=2, text_kwargs=dict(num_layers=2))


def _random_warnings(record):
    return [str(w.message) for w in record if 'RANDOM' in str(w.message)]


@pytest.mark.parametrize('name', [V3, V2])
def test_missing_files_pretrained_true_and_default(name, weights_dir):
    with torch.device('meta'), pytest.raises(FileNotFoundError) as err:
        getattr(hub, name)(pretrained=True)
    for f in FILES[name]:
        assert f in str(err.value)
    assert 'never downloads' in str(err.value)
    with torch.device('meta'), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        model, tokenizer = getattr(hub, name)()
    loud = _random_warnings(record)
    assert len(loud) == 1 and all(f in loud[0] for f in FILES[name])
    assert isinstance(model, DINOTxt) and isinstance(tokenizer, CLIPTokenizer)
    assert not model.training


def _backbone_file(entry, path, **kw):
    backbone = getattr(hub, entry)(pretrained=False, **kw)
    state = {k: torch.randn_like(v) * 0.02 if v.is_floating_point() else v
             for k, v in backbone.state_dict().items()}
    torch.save(state, path)
    return state


def test_v3_official_files_load_by_default_through_torch_hub(weights_dir):
    backbone = _backbone_file('dinov3_vitl16', weights_dir / FILES[V3][1], depth=2)
    released = random_state(official_dinotxt_manifest('dinov3', text_layers=2))
    torch.save(released, weights_dir / FILES[V3][0])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        model, tokenizer = torch.hub.load(REPO_ROOT, V3, source='local', **SMALL)
    assert _random_warnings(record) == []
    state = model.state_dict()
    for k, v in released.items():
        assert torch.equal(state[k], v), k
    for k, v in backbone.items():
        assert torch.equal(model.visual_model.backbone.state_dict()[k], v), k
    with torch.no_grad():
        img = model.encode_image(torch.randn(1, 3, 32, 32), normalize=True)
        txt = model.encode_text(tokenizer.tokenize(['a photo of a dog', 'grass']), normalize=True)
    assert (img @ txt.t()).shape == (1, 2)
    # the official usage: image_logits = logit_scale.exp() * img @ txt.T
    logits, _ = model.get_logits(torch.randn(1, 3, 32, 32), tokenizer.tokenize(['a', 'b']))
    assert logits.shape == (1, 2)


def test_v2_two_files_and_explicit_paths(weights_dir, tmp_path):
    _backbone_file('dinov2_vitl14_reg', weights_dir / FILES[V2][2], depth=2)
    full = random_state(official_dinotxt_manifest('dinov2', text_layers=2))
    head = {k[len('visual_model.head.'):]: v for k, v in full.items()
            if k.startswith('visual_model.head.')}
    text = {k[len('text_model.'):]: v for k, v in full.items() if k.startswith('text_model.')}
    torch.save(head, tmp_path / 'my_head.pth')
    torch.save(text, tmp_path / 'my_text.pth')
    model, _ = hub.dinov2_vitl14_reg4_dinotxt_tet1280d20h24l(
        weights=str(tmp_path / 'my_head.pth'), text_weights=str(tmp_path / 'my_text.pth'),
        **SMALL)
    state = model.state_dict()
    for k, v in full.items():
        if k != 'logit_scale':
            assert torch.equal(state[k], v), k
    # the files swapped: a clear error naming the file
    with pytest.raises(KeyError, match='my_text.pth'):
        hub.dinov2_vitl14_reg4_dinotxt_tet1280d20h24l(
            weights=str(tmp_path / 'my_text.pth'), text_weights=str(tmp_path / 'my_text.pth'),
            **SMALL)


def test_bad_weights_and_urls_are_refused(weights_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        hub.dinov3_vitl16_dinotxt_tet1280d20h24l(weights=str(tmp_path / 'nope.pth'), **SMALL)
    with pytest.raises(ValueError, match='never downloads|offline'):
        hub.dinov3_vitl16_dinotxt_tet1280d20h24l(
            pretrained=False, bpe_path_or_url='https://example.invalid/bpe.txt.gz', **SMALL)
    torch.save({'something': torch.zeros(3)}, tmp_path / 'other.pth')
    with pytest.raises(KeyError, match='other.pth'):
        hub.dinov3_vitl16_dinotxt_tet1280d20h24l(weights=str(tmp_path / 'other.pth'),
                                                 pretrained=False, **SMALL)
