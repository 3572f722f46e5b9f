"""Brute-force float64 references written straight from the paper's equations.

Loops over samples and classes on purpose: these are the specification, not fast code.
"""

import torch


def class_covariance(kind, features, labels, num_classes):
    """Statistics of *all* data seen: per-class torch.cov(correction=0), by layout."""
    A = features.shape[1]
    covs, counts = [], []
    for c in range(num_classes):
        xc = features[labels == c].double()
        counts.append(xc.shape[0])
        if xc.shape[0] == 0:
            covs.append(torch.zeros(A, A, dtype=torch.float64))
        elif xc.shape[0] == 1:
            covs.append(torch.zeros(A, A, dtype=torch.float64))
        else:
            covs.append(torch.cov(xc.T, correction=0).reshape(A, A))
    covs = torch.stack(covs)
    if kind == "full":
        return covs
    if kind == "diagonal":
        return torch.diagonal(covs, dim1=1, dim2=2).clone()
    if kind == "shared":
        n = torch.tensor(counts, dtype=torch.float64)
        return (covs * n.view(-1, 1, 1)).sum(0) / n.sum()
    if kind == "identity":
        return torch.eye(A, dtype=torch.float64)
    raise ValueError(kind)


def sigma_of(kind, covariance, c, A):
    """Sigma_c as a dense A x A matrix."""
    if kind == "full":
        return covariance[c]
    if kind == "diagonal":
        return torch.diag(covariance[c])
    if kind == "shared":
        return covariance
    return torch.eye(A, dtype=torch.float64)


def isda_bound(logits, weight, target, covariance, ratio, kind):
    """Eq. (7), per sample: -log( e^{z_y} / sum_j e^{z_j + ratio/2 v_jy^T Sigma_y v_jy} )."""
    N, C = logits.shape
    A = weight.shape[1]
    out = []
    for i in range(N):
        y = int(target[i])
        S = sigma_of(kind, covariance, y, A)
        terms = []
        for j in range(C):
            v = weight[j] - weight[y]
            terms.append(logits[i, j] + 0.5 * ratio * (v @ S @ v))
        out.append(torch.logsumexp(torch.stack(terms), 0) - logits[i, y])
    return torch.stack(out)


def consistency_bound(logits, weight, probs, covariance, ratio, kind):
    """Eq. (15), per sample, with the pseudo-label argmax p (Eq. 12)."""
    N, C = logits.shape
    A = weight.shape[1]
    out = []
    for i in range(N):
        y = int(torch.argmax(probs[i]))
        S = sigma_of(kind, covariance, y, A)
        total = 0.0
        for k in range(C):
            terms = []
            for j in range(C):
                v = weight[j] - weight[k]
                terms.append(logits[i, j] + 0.5 * ratio * (v @ S @ v))
            total = total + probs[i, k] * (torch.logsumexp(torch.stack(terms), 0) - logits[i, k])
        out.append(total)
    return torch.stack(out)
