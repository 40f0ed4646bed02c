"""Every documentation reference in the repository resolves inside it.

Comments, docstrings and docs cite ``docs/reference.md §N.M``; the private specification the
project was written from does not ship, so shipped files must not cite it ("SPEC §6.4",
"SPEC 9.6") nor point outside the checkout ("../shared/..."). Each ``docs/reference.md §X``
must name a numbered heading of docs/reference.md, and so must the ``§X`` cross-references
inside docs/reference.md itself.
"""
import os
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REFERENCE = osp.join(ROOT, 'docs', 'reference.md')

# What ships: the package, configs, tools, benchmarks, docs and the top-level files.
SHIPPED_DIRS = ('dino_mm', 'configs', 'tools', 'benchmarks', 'docs', 'projects', 'requirements')
SHIPPED_FILES = ('README.md', 'hubconf.py', 'setup.py', 'Makefile')
TEXT_SUFFIXES = ('.py', '.md', '.txt', '.sh', '.yaml', '.yml', '.json', '.cfg', '.toml', '.ini')
SKIP_DIRS = {'__pycache__', '.git', '.venv', 'work_dirs', 'data'}

FORBIDDEN = [
    (re.compile(r'\bSPEC\s*§'), 'a "SPEC §" citation'),
    (re.compile(r'\bSPEC\s+\d'), 'a "SPEC <number>" citation'),
    (re.compile(r'\.\./shared\b'), 'a path into ../shared'),
    (re.compile(r'\b(?:SPEC|DESIGN|STYLE|STACK)\.md\b'), 'a private design document'),
]
# "docs/reference.md §3.4", "docs/reference.md §1.1, §1.7", "docs/reference.md §4.1-§4.3",
# "docs/reference.md §1.5 for v2, §1.10 for v3": every § number after it on the same line.
CITATION = re.compile(r'docs/reference\.md([^\n]*)')
SECTION = re.compile(r'§\s*(\d+(?:\.\d+)*)')
HEADING = re.compile(r'^#{2,6}\s+(\d+(?:\.\d+)*)\s', re.M)
HEADING_LINE = re.compile(r'^#{1,6}\s+(.+?)\s*$', re.M)
# Markdown links such as "../../docs/reference.md#511-published-numbers".
ANCHOR = re.compile(r'reference\.md#([\w-]+)')


def _text_files(paths):
    for top in paths:
        full = osp.join(ROOT, top)
        if osp.isfile(full):
            yield full
            continue
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                if name.endswith(TEXT_SUFFIXES) or name == 'Makefile':
                    yield osp.join(dirpath, name)


def _read(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def _shipped_files():
    return list(_text_files(SHIPPED_DIRS + SHIPPED_FILES))


def _headings():
    return set(HEADING.findall(_read(REFERENCE)))


def _anchors():
    """GitHub's anchors of the headings of docs/reference.md."""
    return {re.sub(r'\s', '-', re.sub(r'[^\w\s-]', '', title.lower()))
            for title in HEADING_LINE.findall(_read(REFERENCE))}


def _line(text, pos):
    return text.count('\n', 0, pos) + 1


def test_reference_has_numbered_sections():
    headings = _headings()
    for top in map(str, range(1, 8)):
        assert top in headings, f'docs/reference.md has no section "{top}"'
    assert len(headings) > 30, sorted(headings)


def test_shipped_files_cite_no_private_document():
    problems = []
    for path in _shipped_files():
        text = _read(path)
        for pattern, what in FORBIDDEN:
            for m in pattern.finditer(text):
                problems.append(f'{osp.relpath(path, ROOT)}:{_line(text, m.start())}: {what} '
                                f'({m.group(0)!r})')
    assert not problems, 'Cite docs/reference.md or the official source instead:\n' + \
        '\n'.join(problems)


def _citation_files():
    """Shipped files and tests (this file excepted: its docstring shows examples)."""
    here = osp.abspath(__file__)
    return [p for p in _shipped_files() + list(_text_files(('tests',)))
            if osp.abspath(p) != here]


def test_reference_citations_resolve():
    headings, anchors = _headings(), _anchors()
    checked, problems = 0, []
    for path in _citation_files():
        text = _read(path)
        for m in ANCHOR.finditer(text):
            if m.group(1) not in anchors:
                problems.append(f'{osp.relpath(path, ROOT)}:{_line(text, m.start())}: '
                                f'#{m.group(1)} is not an anchor of docs/reference.md')
        for m in CITATION.finditer(text):
            for number in SECTION.findall(m.group(1)):
                checked += 1
                if number not in headings:
                    problems.append(f'{osp.relpath(path, ROOT)}:{_line(text, m.start())}: '
                                    f'§{number} is not a heading of docs/reference.md')
    assert not problems, '\n'.join(problems)
    assert checked > 50, f'only {checked} citations found; has the citation format changed?'


def test_reference_internal_cross_references_resolve():
    headings = _headings()
    text = _read(REFERENCE)
    missing = sorted({n for n in SECTION.findall(text) if n not in headings},
                     key=lambda n: [int(p) for p in n.split('.')])
    assert not missing, f'docs/reference.md cites sections it does not have: {missing}'


@pytest.mark.parametrize('sample, ok', [
    ('see SPEC §6.4', False), ('(SPEC 9.6)', False), ('see ../shared/STACK.md', False),
    ('XFORMERS_SPEC="x"', True), ('docs/reference.md §3.4', True),
])
def test_forbidden_patterns(sample, ok):
    hit = any(p.search(sample) for p, _ in FORBIDDEN)
    assert hit != ok
