# Logistic regression (docs/reference.md §5.4): L-BFGS, C in 10 ** linspace(-6, 5, 45), tol 1e-12,
# C chosen on 10% of train, refit on train, top-1 on val. scikit-learn on CPU (cuML if
# installed). Same command line as k-NN.
_base_ = ['./eval_knn.py']

test_evaluator = dict(_delete_=True, type='dino_mm.LogisticRegressionMetric', Cs=None,
                      max_iter=1000, tol=1e-12, select_on='holdout', topk=(1, 5))
