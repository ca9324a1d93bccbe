"""Evaluation: FID/KID, artifact scores, the HTML report (the paired metrics, L1,
PSNR and SSIM, are `pix2pix_fast.metrics`, which validation during training uses too).

    fid        Fréchet distance, KID, InceptionFeatures
    inception  the FID Inception-v3 and its weights (never downloaded)
    artifacts  border and checkerboard artifact scores
    report     evaluate(checkpoint) -> metrics + index.html; evaluate_model(G, dataset)
"""


def __getattr__(name):
    # Keep `import pix2pix_fast.eval` light: the report pulls in matplotlib and the models.
    if name in ("evaluate", "evaluate_model"):
        from pix2pix_fast.eval import report

        return getattr(report, name)
    if name == "MissingWeightsError":
        from pix2pix_fast.eval.inception import MissingWeightsError

        return MissingWeightsError
    raise AttributeError(f"module 'pix2pix_fast.eval' has no attribute {name!r}")


__all__ = ["evaluate", "evaluate_model", "MissingWeightsError"]
