"""Export a backbone to TorchScript or ONNX as ``images -> (class token, patch tokens)``.

The exported graph returns the two normalised outputs of ``forward_features``
(``x_norm_clstoken`` (B, D) and ``x_norm_patchtokens`` (B, N, D)), the pair most
downstream code consumes; dicts are avoided because neither tracing nor ONNX keep them.
"""
import os
import os.path as osp
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


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


def export_torchscript(backbone: nn.Module, path: str,
                       example_size: Tuple[int, int] = (224, 224),
                       method: str = 'trace') -> torch.jit.ScriptModule:
    """Save a TorchScript version of ``FeatureExportWrapper(backbone)``.

    Tracing records the operations run on one example; python arithmetic on shapes
    (e.g. position-embedding interpolation factors) becomes constants, so a traced
    model is only guaranteed for the traced input size. ``method='script'`` compiles
    the code instead and keeps control flow, but needs scriptable model code.

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
        with torch.no_grad(), warnings.catch_warnings():
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
                dynamic: bool = True, opset: Optional[int] = None) -> Dict[str, Any]:
    """Save an ONNX graph of ``FeatureExportWrapper(backbone)`` and check it.

    With ``dynamic=True`` the batch, height and width axes are exported as symbolic
    dimensions through the dynamo exporter; if the model code cannot be exported with
    symbolic sizes, a static graph for ``example_size`` is written instead and the
    returned ``dynamic`` flag says so.

    Args:
        backbone (nn.Module): The backbone.
        path (str): Output ``.onnx`` file.
        example_size (tuple[int, int]): (H, W) of the example input. Defaults to 224.
        dynamic (bool): Ask for dynamic batch / height / width. Defaults to True.
        opset (int, optional): ONNX opset; None lets torch choose. Defaults to None.

    Returns:
        dict: ``path``, ``dynamic`` (whether the graph has symbolic H/W) and
        ``exporter`` ('dynamo' or 'torchscript').
    """
    import onnx
    wrapper = FeatureExportWrapper(backbone.eval()).eval()
    example = (_example(example_size), )
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    kwargs: Dict[str, Any] = dict(input_names=['images'],
                                  output_names=['cls_token', 'patch_tokens'])
    if opset is not None:
        kwargs['opset_version'] = opset
    info: Dict[str, Any] = {'path': path, 'dynamic': False, 'exporter': 'dynamo'}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        exported = False
        if dynamic:
            dim = torch.export.Dim
            shapes = ({0: dim('batch', min=1, max=1024), 2: dim.AUTO, 3: dim.AUTO}, )
            try:
                program = torch.onnx.export(wrapper, example, dynamo=True,
                                            dynamic_shapes=shapes, **kwargs)
                program.save(path)
                exported = True
            except Exception as err:  # noqa: BLE001 - fall back to a static graph
                info['dynamic_error'] = f'{type(err).__name__}: {str(err)[:300]}'
        if not exported:
            program = torch.onnx.export(wrapper, example, dynamo=True, **kwargs)
            program.save(path)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    in_shape = model.graph.input[0].type.tensor_type.shape.dim
    info['dynamic'] = any(d.dim_param for d in list(in_shape)[2:])
    info['input_shape'] = [d.dim_param or d.dim_value for d in in_shape]
    return info


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
    """Largest absolute difference between eager and exported outputs per input size."""
    wrapper = FeatureExportWrapper(backbone.eval()).eval()
    diffs = {}
    for size in sizes:
        x = _example(size, batch)
        with torch.no_grad():
            ref = wrapper(x)
            out = exported(x)
        diffs[tuple(size)] = max(float((r - torch.as_tensor(o)).abs().max())
                                 for r, o in zip(ref, out))
    return diffs
