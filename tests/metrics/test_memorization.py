"""Memorization audit: copies flagged ~100 %, fresh samples flagged at the calibration rate (with
a derived binomial tolerance), strata checked against a brute-force NumPy loop, exact distances,
input errors, and one end-to-end audit_images call in the EfficientNet-Lite0 space."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medgen.data.toy import make_pairs  # noqa: E402
from medgen.metrics import memorization as mem  # noqa: E402

torch.set_num_threads(1)


def _gauss(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _brute_force(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent nearest neighbour: a Python loop over query rows with NumPy norms."""
    d = np.empty(len(query))
    j = np.empty(len(query), dtype=np.int64)
    for i, q in enumerate(query):
        all_d = np.sqrt(((ref - q) ** 2).sum(axis=1))
        j[i] = int(np.argmin(all_d))
        d[i] = all_d[j[i]]
    return d, j


def test_nearest_neighbours_exact_and_chunked(monkeypatch):
    ref, q = _gauss(300, 8, 0), _gauss(50, 8, 1)
    q[:5] = ref[[3, 30, 100, 200, 299]] + 1e-9            # near-copies: matrix-form cdist cancels here
    monkeypatch.setattr(mem, "_CHUNK_PAIRS", 300 * 7)     # force 8 chunks
    d, j = mem.nearest_neighbours(torch.tensor(q), torch.tensor(ref))
    want_d, want_j = _brute_force(q, ref)
    np.testing.assert_array_equal(j, want_j)
    np.testing.assert_allclose(d, want_d, rtol=1e-12, atol=1e-15)
    assert np.all(d[:5] < 1e-8)


def test_copying_generator_is_flagged_and_fresh_one_at_calibration_rate():
    """Gaussian "features" (D=16). Train N=2000; calibration held-out M=5000; a fresh held-out
    sample G=5000 plays an honest generator. Given the training set, calibration and fresh
    distances are i.i.d. from one continuous law F, so the flagged fraction is a Binomial(G, u)/G
    with u = F(threshold) ~ Beta-distributed around p = 1 % with variance ~ p(1-p)/M. Total
    sd = sqrt(p(1-p) (1/M + 1/G)) = sqrt(0.0099 * 0.0004) = 0.00199; we allow 4 sd = 0.008."""
    train, calib, fresh = _gauss(2000, 16, 10), _gauss(5000, 16, 11), _gauss(5000, 16, 12)
    sd = np.sqrt(0.01 * 0.99 * (1 / 5000 + 1 / 5000))
    honest = mem.audit(train, calib, fresh)
    assert abs(honest.flagged_fraction - 0.01) < 4 * sd
    noise = 1e-3 * np.random.default_rng(13).standard_normal((500, 16))
    copies = mem.audit(train, calib, train[:500] + noise)
    assert copies.flagged.all()                              # |noise| ~ 0.004 << threshold
    np.testing.assert_array_equal(copies.generated_nearest, np.arange(500))
    assert copies.thresholds[mem.ALL] > 100 * np.linalg.norm(noise, axis=1).max()


def test_toy_images_flattened():
    """Real (toy) images, flattened 16x16 pixels as features: copies of training subjects are all
    flagged; unseen subjects at most 5 % (M = G = 200: sd = sqrt(0.0099 * 2/200) = 0.0099, 4 sd)."""
    flat = lambda ks: make_pairs(ks, 16)[1].reshape(len(ks), -1)       # noqa: E731
    train, calib, fresh = flat(range(0, 300)), flat(range(300, 500)), flat(range(500, 700))
    assert mem.audit(train, calib, train[:100]).flagged_fraction == 1.0
    assert mem.audit(train, calib, fresh).flagged_fraction < 0.01 + 4 * np.sqrt(0.0099 * 2 / 200)


def test_strata_match_brute_force_loop():
    rng = np.random.default_rng(5)
    train, held, gen = _gauss(120, 4, 1), _gauss(60, 4, 2), _gauss(40, 4, 3)
    s_tr, s_ho, s_ge = rng.integers(0, 3, 120), rng.integers(0, 3, 60), rng.integers(0, 3, 40)
    res = mem.audit(train, held, gen, train_strata=s_tr, heldout_strata=s_ho, generated_strata=s_ge,
                    percentile=10.0)
    for g in range(40):                                                  # brute force per image
        cand = np.flatnonzero(s_tr == s_ge[g])
        d, j = _brute_force(gen[g:g + 1], train[cand])
        assert res.generated_nearest[g] == cand[j[0]] and res.generated_distance[g] == pytest.approx(d[0], rel=1e-12)
        assert s_tr[res.generated_nearest[g]] == s_ge[g]
    for s in range(3):
        cand = np.flatnonzero(s_tr == s)
        h_d, _ = _brute_force(held[s_ho == s], train[cand])
        assert res.thresholds[s] == pytest.approx(np.percentile(h_d, 10.0), rel=1e-12)
        flagged = res.generated_distance[s_ge == s] < res.thresholds[s]
        assert res.flagged_fraction_per_stratum[s] == pytest.approx(flagged.mean())
        assert res.n_per_stratum[s] == {"train": int((s_tr == s).sum()), "heldout": int((s_ho == s).sum()),
                                        "generated": int((s_ge == s).sum())}
    # ignoring strata would change some neighbours: the strata are really used
    plain = mem.audit(train, held, gen)
    assert (plain.generated_nearest != res.generated_nearest).any()
    frame, summary = res.to_frame(), res.summary()
    assert len(frame) == 40 and list(frame["flagged"]) == list(res.flagged)
    assert list(summary["stratum"]) == [0, 1, 2] and summary["n_generated"].sum() == 40
    np.testing.assert_allclose(summary["nearest_pair_distance"],
                               [res.generated_distance[s_ge == s].min() for s in range(3)])
    pairs = mem.closest_pairs(res, k=2)
    assert len(pairs) == 6 and [p[3] for p in pairs] == [0, 0, 1, 1, 2, 2]
    for rank, (g, t, d, s) in enumerate(pairs):
        assert d == res.generated_distance[g] and t == res.generated_nearest[g] and s_ge[g] == s
        assert d == np.sort(res.generated_distance[s_ge == s])[rank % 2]     # 1st, 2nd closest of s
    best = mem.closest_pairs(res, k=1, per_stratum=False)[0]
    assert best[2] == res.generated_distance.min()


def test_calibrate_then_screen_is_the_audit_and_reports_uncalibrated_strata():
    """One calibration serves several generated batches with the audit's thresholds, distances and
    flags on the same data; a stratum without training or held-out images is said, never flagged."""
    rng = np.random.default_rng(7)
    train, held, gen = _gauss(150, 4, 1), _gauss(60, 4, 2), _gauss(30, 4, 3)
    s_tr, s_ho, s_ge = rng.integers(0, 3, 150), rng.integers(0, 3, 60), rng.integers(0, 3, 30)
    gen[:3] = train[:3]                                                   # three copies: flagged
    s_ge[:3] = s_tr[:3]
    res = mem.audit(train, held, gen, train_strata=s_tr, heldout_strata=s_ho, generated_strata=s_ge, percentile=5.0)
    cal = mem.calibrate(train, held, train_strata=s_tr, heldout_strata=s_ho, percentile=5.0)
    assert cal.thresholds == res.thresholds and list(cal.thresholds) == [0, 1, 2]
    np.testing.assert_array_equal(cal.heldout_distance, res.heldout_distance)
    np.testing.assert_array_equal(cal.heldout_nearest, res.heldout_nearest)
    assert [cal.n_heldout(s) for s in range(3)] == [res.n_per_stratum[s]["heldout"] for s in range(3)]
    for part in (slice(0, 10), slice(10, 30)):                            # batch by batch, same answers
        scr = mem.screen(cal, gen[part], s_ge[part])
        np.testing.assert_array_equal(scr.distance, res.generated_distance[part])
        np.testing.assert_array_equal(scr.nearest, res.generated_nearest[part])
        np.testing.assert_array_equal(scr.flagged, res.flagged[part])
        assert scr.calibrated.all() and list(scr.threshold) == [res.thresholds[s] for s in s_ge[part]]
    assert res.flagged[:3].all()
    # stratum 3 has training images but no held-out ones; stratum 4 has neither: reported, not flagged
    cal = mem.calibrate(train, held, train_strata=np.where(np.arange(150) < 10, 3, s_tr), heldout_strata=s_ho)
    scr = mem.screen(cal, train[:2], [3, 4])
    assert scr.distance[0] == 0.0 and scr.nearest[0] == 0 and np.isnan(scr.threshold[0])
    assert np.isnan(scr.distance[1]) and scr.nearest[1] == -1
    assert not scr.calibrated.any() and not scr.flagged.any()
    unstratified = mem.screen(mem.calibrate(train, held), gen)           # no strata: one stratum ALL
    np.testing.assert_array_equal(unstratified.flagged, mem.audit(train, held, gen).flagged)
    with pytest.raises(ValueError, match="held-out stratum 'z' has no training"):
        mem.calibrate(train[:10], held[:10], train_strata=["a"] * 10, heldout_strata=["z"] + ["a"] * 9)
    with pytest.raises(ValueError, match="or for neither"):
        mem.calibrate(train, held, train_strata=s_tr)
    with pytest.raises(ValueError, match="dims differ"):
        mem.screen(cal, _gauss(2, 5, 0))


def test_pixels_feature_space_is_the_flattened_image():
    from medgen.metrics.features import feature_space_info, features

    x = torch.rand(3, 1, 8, 8) * 2 - 1
    np.testing.assert_array_equal(features(x, "pixels"), x.flatten(1))
    assert feature_space_info("pixels").name == "pixels"
    res = mem.audit_images(x, x[:2] + 0.5, x[:1], space="pixels")       # a copy of a training image
    assert res.flagged.all() and res.generated_distance[0] == 0.0 and res.feature_space.name == "pixels"
    cal = mem.calibrate_images(x, x[:2] + 0.5, space="pixels", train_strata=[0, 0, 1], heldout_strata=[0, 1])
    assert cal.feature_space.name == "pixels"
    assert cal.thresholds == mem.calibrate(x.flatten(1), (x[:2] + 0.5).flatten(1), train_strata=[0, 0, 1],
                                           heldout_strata=[0, 1]).thresholds
    scr = mem.screen_images(cal, x[2:], [1])
    assert scr.nearest[0] == 2 and scr.flagged[0]
    with pytest.raises(ValueError, match="no feature space"):
        mem.screen_images(mem.calibrate(x.flatten(1), x.flatten(1)), x)


def test_errors():
    tr, ho, ge = _gauss(10, 3, 0), _gauss(10, 3, 1), _gauss(4, 3, 2)
    with pytest.raises(ValueError, match="generated stratum 'c' has no training images") as e:
        mem.audit(tr, ho, ge, train_strata=["a"] * 5 + ["b"] * 5, heldout_strata=["a"] * 10,
                  generated_strata=["a", "a", "c", "a"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="generated stratum 'b' has no held-out"):
        mem.audit(tr, ho, ge, train_strata=["a"] * 5 + ["b"] * 5, heldout_strata=["a"] * 10,
                  generated_strata=["a", "b", "a", "a"])
    with pytest.raises(ValueError, match="held-out stratum 'z' has no training"):
        mem.audit(tr, ho, ge, train_strata=["a"] * 10, heldout_strata=["z"] + ["a"] * 9,
                  generated_strata=["a"] * 4)
    with pytest.raises(ValueError, match="or for none"):
        mem.audit(tr, ho, ge, train_strata=["a"] * 10)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        mem.audit(tr, ho, ge, train_strata=["a"] * 10, heldout_strata=["a"] * 10, generated_strata=["a"] * 3)
    with pytest.raises(ValueError, match="dims differ"):
        mem.audit(tr, ho, _gauss(4, 5, 2))
    with pytest.raises(ValueError, match="NaN"):
        mem.audit(tr, ho, ge * np.nan)


def test_audit_images_efficientnet_lite0_end_to_end():
    _, imgs = make_pairs(range(10), 32)
    imgs = torch.from_numpy(imgs)
    train, held = imgs[:4], imgs[4:8]
    gen = torch.cat([train[[2, 0]], imgs[8:10]])            # two copies, two unseen subjects
    res = mem.audit_images(train, held, gen, space="efficientnet_lite0", percentile=50.0, batch_size=5)
    assert res.feature_space.name == "efficientnet_lite0" and len(res.feature_space.weights_sha256) == 64
    assert list(res.generated_nearest[:2]) == [2, 0]
    assert np.all(res.generated_distance[:2] < 1e-3) and res.flagged[:2].all()
    assert np.all(res.generated_distance[2:] > 1.0)          # unseen toy subjects are far in feature space
    fig1 = mem.plot_distance_histograms(res)
    fig2 = mem.plot_closest_pairs(res, train, gen, k=2)
    assert len(fig1.axes) == 1 and len(fig2.axes) == 4
