

def test_weights_come_from_the_checkpoint(tiny_run):
    """The plumbing under every score: a freshly built model (any init seed) holds
    exactly the checkpoint's weights after loading, and different checkpoints differ.
    (A downstream margin of pre-trained over random init is not tested: at test-affordable
    sizes none was measured, see the README "Results".)"""
    import torch

    from spactor.runners.evaluate import build_model, load_model_weights, open_run

    run = open_run(tiny_run)
    models = []
    for seed, step in ((0, 2), (1, 2), (2, 4)):
        torch.manual_seed(seed)
        model = build_model(run)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        load_model_weights(model, tiny_run / "checkpoints" / f"step_{step:08d}")
        assert any(not torch.equal(fresh[k], v) for k, v in model.state_dict().items())
        models.append(model.state_dict())
    same, other = models[1], models[2]
    assert all(torch.equal(models[0][k], same[k]) for k in same)
    assert any(not torch.equal(same[k], other[k]) for k in same)
