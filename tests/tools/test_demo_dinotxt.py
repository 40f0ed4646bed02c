"""tools/demo_dinotxt.py (what `make demo-dinotxt` runs), shortened: it builds its data
offline, trains through the runner and reports zero-shot accuracy well above chance."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_short_demo_learns_and_reports(tmp_path, tool_env):
    work = tmp_path / 'work'
    p = subprocess.run(
        [sys.executable, 'tools/demo_dinotxt.py', '--max-iters', '150', '--work-dir', str(work),
         '--data-root', str(tmp_path / 'digits'), '--captions-root', str(tmp_path / 'captions')],
        cwd=ROOT, env=tool_env, capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]  # exit 1 would mean: not above chance + 10 points
    report = (work / 'zero_shot_report.txt').read_text()
    assert 'learned: yes' in report and 'chance' in report
    trained = float(report.split('dino.txt trained')[1].split('%')[0])
    assert trained > 30.0  # 45.13 % here after 150 iterations; chance is 10 %
    assert osp.isfile(tmp_path / 'captions' / 'annotations' / 'captions_train2017.json')
    assert 'expected with the default settings' not in report  # non-default run
