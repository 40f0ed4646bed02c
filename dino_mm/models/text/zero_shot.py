"""Class names and prompt templates for zero-shot classification and segmentation.

The ImageNet class names and OpenAI's 80 ImageNet prompt templates come from open_clip
(``open_clip.zero_shot_metadata``), the package the tokenizer comes from; the official
dino.txt notebooks use the same 80 templates.
"""
import os.path as osp
from typing import Callable, List, Sequence, Union

__all__ = ['load_class_names', 'load_templates', 'fill_template']

NamesSpec = Union[str, Sequence[str]]


def _read_lines(path: str, what: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line and not line.startswith('#')]
    if not lines:
        raise ValueError(f'{what} file {path!r} has no entries (one per line expected)')
    return lines


def load_class_names(spec: NamesSpec) -> List[str]:
    """Class names from a list, a text file (one per line) or the tag ``'imagenet'``.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: An empty list, an empty or duplicated name.
    """
    if isinstance(spec, str):
        if spec == 'imagenet':
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
            return list(IMAGENET_CLASSNAMES)
        if not osp.isfile(spec):
            raise FileNotFoundError(
                f'class-name file {spec!r} does not exist; pass a text file with one class name '
                "per line (in label order), a list of names, or 'imagenet'")
        names = _read_lines(spec, 'class-name')
    else:
        names = [str(n).strip() for n in spec]
    if not names:
        raise ValueError('zero-shot evaluation needs at least one class name')
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f'class names at indices {empty[:5]} are empty')
    seen, dupes = set(), []
    for n in names:
        if n in seen:
            dupes.append(n)
        seen.add(n)
    if dupes:
        raise ValueError(f'duplicated class names {sorted(set(dupes))[:5]}: two classes would get '
                         'the same text embedding')
    return names


def load_templates(spec: NamesSpec) -> List[Union[str, Callable[[str], str]]]:
    """Prompt templates: a list of ``'... {} ...'`` strings, a file, ``'openai_imagenet'``
    (80 templates) or ``'simple'`` (``'a photo of a {}.'``)."""
    if isinstance(spec, str):
        if spec == 'openai_imagenet':
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
            return list(OPENAI_IMAGENET_TEMPLATES)
        if spec == 'simple':
            return ['a photo of a {}.']
        if not osp.isfile(spec):
            raise FileNotFoundError(
                f'template file {spec!r} does not exist; pass a file with one template per line '
                "containing '{}', a list of templates, 'openai_imagenet' or 'simple'")
        spec = _read_lines(spec, 'template')
    templates = list(spec)
    if not templates:
        raise ValueError('zero-shot evaluation needs at least one prompt template')
    for t in templates:
        if isinstance(t, str) and '{}' not in t and '{0}' not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' where the class name goes")
    return templates


def fill_template(template: Union[str, Callable[[str], str]], name: str) -> str:
    return template(name) if callable(template) else template.format(name)
