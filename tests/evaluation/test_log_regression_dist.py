"""The C sweep of LogisticRegressionMetric is spread over the ranks of a gloo run.

Two ranks each hold half of the test samples (as MMEngine's sampler gives them); every
rank fits only its share of the C grid, and the metrics equal the one-process result.
"""
import torch
import torch.multiprocessing as mp

WORLD = 2
CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _data():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x / 16.0).float()
    y = torch.from_numpy(y)
    return x[:600], y[:600], x[600:800], y[600:800]


def _metric():
    from dino_mm.evaluation.log_regression import LogisticRegressionMetric
    return LogisticRegressionMetric(Cs=CS, max_iter=200, backend='sklearn', log_sweep=True)


def _process(metric, feats, labels):
    metric.process({}, [dict(feature=f, gt_label=torch.tensor([int(t)]))
                        for f, t in zip(feats, labels)])


def _worker(rank, init_file, out_file):
    import torch.distributed as dist

    import dino_mm.evaluation.log_regression as lr
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    torch.set_num_threads(1)
    fitted = []
    real_fit = lr.fit_logistic_regression

    def counting_fit(x, y, C, *args, **kwargs):
        fitted.append((len(x), C))
        return real_fit(x, y, C, *args, **kwargs)

    lr.fit_logistic_regression = counting_fit
    xtr, ytr, xva, yva = _data()
    metric = _metric()
    metric.set_train_features(xtr, ytr)
    # rank r gets samples r, r + 2, ... (MMEngine's DefaultSampler without shuffling)
    _process(metric, xva[rank::WORLD], yva[rank::WORLD])
    out = metric.evaluate(len(xva))
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, dict(metrics=out, fitted=fitted))
    if rank == 0:
        torch.save(gathered, out_file)
    dist.destroy_process_group()


def test_c_sweep_is_spread_over_ranks_and_equals_one_process(tmp_path):
    out_file = str(tmp_path / 'out.pt')
    mp.spawn(_worker, args=(str(tmp_path / 'pg'), out_file), nprocs=WORLD, join=True)
    per_rank = torch.load(out_file, weights_only=False)

    xtr, ytr, xva, yva = _data()
    metric = _metric()
    metric.set_train_features(xtr, ytr)
    _process(metric, xva, yva)
    single = metric.evaluate(len(xva))

    n_fit = len(xtr) - int(len(xtr) * 0.1)  # the sweep trains on 90 %, the refit on all
    sweeps = [[c for n, c in r['fitted'] if n != len(xtr)] for r in per_rank]
    assert sorted(sweeps[0] + sweeps[1]) == sorted(CS)  # every C fitted once, on one rank
    assert sweeps[0] and sweeps[1] and not set(sweeps[0]) & set(sweeps[1])
    assert all(n in (n_fit, len(xtr)) for r in per_rank for n, _ in r['fitted'])
    for r in per_rank:  # the same metrics on every rank, equal to one process
        assert r['metrics'].keys() == single.keys()
        for k, v in single.items():
            assert r['metrics'][k] == v, k
    assert single['logreg/top1'] > 85
