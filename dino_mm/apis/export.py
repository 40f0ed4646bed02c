"""Export a backbone to TorchScript or ONNX as ``images -> (class token, patch tokens)``.

The exported graph returns the two normalised outputs of ``forward_features``
(``x_norm_clstoken`` (B, D) and ``x_norm_patchtokens`` (B, N, D)), the pair most
downstream code consumes; dicts are avoided because neither tracing nor ONNX keep them.
"""
import contextlib
import os
import os.path as osp
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .extractors import backbone_patch_size


class FeatureExportWrapper(nn.Module):
    """``forward(x) -> (x_norm_clstoken, x_norm_patchtokens)`` of a backbone.

    Args:
        backbone (nn.Module): A module whose ``forward_features`` returns the official
            output dict.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_features(x)
        return out['x_norm_clstoken'], out['x_norm_patchtokens']


def _example(size: Tuple[int, int], batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, int(size[0]), int(size[1]))


@contextlib.contextmanager
def _frozen_pos_embed(backbone: nn.Module, size: Tuple[int, int]) -> Iterator[None]:
    """While tracing, serve a foreign DINOv2's interpolated position embedding as a constant.

    Under the tracer, image sizes are tensors, and the official interpolation computes
    its bicubic scale factors from them, which ``F.interpolate`` rejects. For backbones
    without a traceable interpolation (``traceable_pos_embed``; dino_mm's own ViT has
    one) the embedding for ``size`` is computed eagerly and returned as is, which makes
    the trace specific to that size. DINOv3's RoPE needs nothing of the kind.
    """
    method = getattr(backbone, 'interpolate_pos_encoding', None)
    if (method is None or getattr(backbone, 'pos_embed', None) is None
            or getattr(backbone, 'traceable_pos_embed', False)):
        yield  # dino_mm's ViT interpolates with traced sizes: nothing to freeze
        return
    patch = backbone_patch_size(backbone)
    # The official signature: tokens (B, 1 + h*w, D) without registers, then h, w.
    probe = backbone.pos_embed.new_zeros(
        1, 1 + (size[0] // patch) * (size[1] // patch), backbone.pos_embed.shape[-1])
    with torch.no_grad():
        fixed = method(probe, int(size[0]), int(size[1])).detach()
    backbone.interpolate_pos_encoding = lambda x, h, w: fixed.to(x.dtype)
    try:
        yield
    finally:
        del backbone.interpolate_pos_encoding


def export_torchscript(backbone: nn.Module, path: str,
                       example_size: Tuple[int, int] = (224, 224),
                       method: str = 'trace') -> torch.jit.ScriptModule:
    """Save a TorchScript version of ``FeatureExportWrapper(backbone)``.

    Tracing records the operations run on one example; python arithmetic on shapes
    becomes constants. dino_mm's ViTs (DINOv2 position-embedding interpolation, DINOv3
    RoPE) compute with the traced sizes, so one trace serves every input size; other
    backbones may be guaranteed only at the traced size (check with
    :func:`max_abs_diff`). ``method='script'`` compiles the code instead and keeps
    control flow, but needs scriptable model code.

    Args:
        backbone (nn.Module): The backbone (put in eval mode here).
        path (str): Output ``.pt`` file.
        example_size (tuple[int, int]): (H, W) of the tracing example. Defaults to 224.
        method (str): ``'trace'`` or ``'script'``. Defaults to 'trace'.

    Returns:
        torch.jit.ScriptModule: The exported module.
    """
    wrapper = FeatureExportWrapper(backbone.eval()).eval()
    if method == 'trace':
        with torch.no_grad(), warnings.catch_warnings(), _frozen_pos_embed(
                backbone, example_size):
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            module = torch.jit.trace(wrapper, _example(example_size), check_trace=False)
    elif method == 'script':
        try:
            module = torch.jit.script(wrapper)
        except Exception as err:  # the scripting compiler raises many error types
            raise RuntimeError(f'{type(backbone).__name__} cannot be compiled with '
                               f'torch.jit.script ({type(err).__name__}); export with '
                               f"method='trace' instead.") from err
    else:
        raise ValueError(f"method must be 'trace' or 'script', got {method!r}.")
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    module.save(path)
    return module


def export_onnx(backbone: nn.Module, path: str, example_size: Tuple[int, int] = (224, 224),
                dynamic: bool = True, opset: int = 17,
                check_sizes: Sequence[Tuple[int, int]] = (), atol: float = 1e-4,
                exporter: str = 'torchscript') -> Dict[str, Any]:
    """Save an ONNX graph of ``FeatureExportWrapper(backbone)`` and check it.

    With ``dynamic=True`` the batch, height and width axes are exported as symbolic
    dimensions (DINOv2, with or without registers, and DINOv3 alike: dino_mm's ViT
    interpolates its position embedding with traced sizes). Model code that cannot be
    exported with symbolic sizes gets a static graph for ``example_size`` instead; the
    returned ``dynamic`` flag says which one was written.

    Args:
        backbone (nn.Module): The backbone.
        path (str): Output ``.onnx`` file.
        example_size (tuple[int, int]): (H, W) of the example input. Defaults to 224.
        dynamic (bool): Ask for dynamic batch / height / width. Defaults to True.
        opset (int): ONNX opset. Defaults to 17.
        check_sizes (Sequence[tuple[int, int]]): Sizes at which a dynamic graph is run
            with onnxruntime (when installed) and compared with eager outputs, because
            exporters can silently bake size-dependent arithmetic into constants; a
            graph that fails is replaced by a static one. A size other than the example
            (:func:`other_size`) is always added. Defaults to ().
        atol (float): Tolerance of that check. Defaults to 1e-4.
        exporter (str): ``'torchscript'`` (``torch.onnx.export(dynamo=False)``, about a
            second for small models) or ``'dynamo'`` (``torch.export`` based; much
            slower to export). Defaults to 'torchscript'.

    Returns:
        dict: ``path``, ``dynamic`` (whether the graph has symbolic H/W),
        ``input_shape`` and, when the dynamic attempt failed, ``dynamic_error``.
    """
    import onnx
    if exporter not in ('torchscript', 'dynamo'):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}.")
    wrapper = FeatureExportWrapper(backbone.eval()).eval()
    example = (_example(example_size), )
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    names = dict(input_names=['images'], output_names=['cls_token', 'patch_tokens'])
    info: Dict[str, Any] = {'path': path, 'exporter': exporter}
    exported = False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if dynamic:
            try:
                if exporter == 'dynamo':
                    dim = torch.export.Dim
                    shapes = ({0: dim('batch', min=1, max=1024), 2: dim.AUTO,
                               3: dim.AUTO}, )
                    torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=shapes,
                                      opset_version=opset, **names).save(path)
                else:
                    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'},
                            'cls_token': {0: 'batch'},
                            'patch_tokens': {0: 'batch', 1: 'patches'}}
                    torch.onnx.export(wrapper, example, path, dynamo=False,
                                      dynamic_axes=axes, opset_version=opset, **names)
                exported = True
            except Exception as err:  # noqa: BLE001 - fall back to a static graph
                info['dynamic_error'] = f'{type(err).__name__}: {str(err)[:300]}'
            if exported:
                # Exporters can bake size-dependent arithmetic into constants, so a
                # dynamic graph is only kept if it is right at a size it was not traced at
                # (added to ``check_sizes`` when they hold only the example size).
                sizes = [tuple(int(v) for v in c) for c in check_sizes] or [
                    tuple(example_size)]
                if all(c == tuple(example_size) for c in sizes):
                    sizes.append(other_size(backbone, example_size))
                error = _check_onnx(backbone, path, sizes, atol)
                if error:
                    info['dynamic_error'] = error
                    exported = False
        if not exported:
            with _frozen_pos_embed(backbone, example_size):
                torch.onnx.export(wrapper, example, path, dynamo=False, opset_version=opset,
                                  **names)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    dims = list(model.graph.input[0].type.tensor_type.shape.dim)
    info['dynamic'] = any(d.dim_param for d in dims[2:])
    info['input_shape'] = [d.dim_param or d.dim_value for d in dims]
    return info


def other_size(backbone: nn.Module, size: Tuple[int, int]) -> Tuple[int, int]:
    """A size other than ``size`` (4 patches more per side, e.g. 224 -> 280 for DINOv2), to
    check that an exported graph is not specialised to the size it was traced at."""
    patch = backbone_patch_size(backbone)
    return int(size[0]) + 4 * patch, int(size[1]) + 4 * patch


def _check_onnx(backbone: nn.Module, path: str, sizes: Sequence[Tuple[int, int]],
                atol: float) -> Optional[str]:
    runner = onnx_runner(path)
    if runner is None:
        return None
    diffs = max_abs_diff(backbone, runner, sizes)
    bad = {k: v for k, v in diffs.items() if v > atol}
    return f'dynamic graph differs from eager: {bad}' if bad else None


def onnx_runner(path: str) -> Optional[Callable[[torch.Tensor], List[torch.Tensor]]]:
    """An onnxruntime CPU session as a callable, or None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]

    return run


def max_abs_diff(backbone: nn.Module, exported: Callable, sizes: Sequence[Tuple[int, int]],
                 batch: int = 1) -> Dict[Tuple[int, int], float]:
    """Largest absolute difference between eager and exported outputs per input size.

    A size the exported model cannot run, or runs with wrong output shapes (a graph
    specialised to another size), counts as ``inf``.
    """
    wrapper = FeatureExportWrapper(backbone.eval()).eval()
    diffs = {}
    for size in sizes:
        x = _example(size, batch)
        with torch.no_grad():
            ref = wrapper(x)
            try:
                out = [torch.as_tensor(o) for o in exported(x)]
            except Exception:  # noqa: BLE001 - onnxruntime / TorchScript error types vary
                diffs[tuple(size)] = float('inf')
                continue
        if [r.shape for r in ref] != [o.shape for o in out]:
            diffs[tuple(size)] = float('inf')
        else:
            diffs[tuple(size)] = max(float((r - o).abs().max()) for r, o in zip(ref, out))
    return diffs
