"""Distractor augmentation, plain-text reference (envs.distractors): the study's counting rules, where units
go, ids and coordinates that never touch the real task, determinism, the banks' data, and real episodes
(ALFWorld walkthroughs, Sokoban BFS plans, a ScienceWorld gold path) that still win on augmented text."""
import json
import math
import re
import shutil

import jax
import numpy as np
import pytest

import envs.sokoban as sk
from envs import distractors as D

ALF_OBS = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
           "you see a cabinet 2, a cabinet 1, a countertop 1, a mug 2, and a sinkbasin 1.")
ALF_ACTIONS = ["go to cabinet 1", "go to cabinet 2", "take mug 1 from countertop 1", "take mug 2 from countertop 1"]
# A real ScienceWorld observation (the hallway at the start of "boil").
SCI_OBS = ("This room is called the hallway. In it, you see: \n\tthe agent\n\ta substance called air\n\ta picture\n"
           "You also see:\n\tA door to the art studio (that is closed)\n\tA door to the kitchen (that is closed)\n"
           "In your inventory, you see:\n\tan orange")
SOKOBAN_LINE = re.compile(r"\((\d+), (\d+)\) shows a ([A-Za-z ]+) \(([a-z ]+); unreachable\)\.")
CELL = re.compile(r"(Wall|Goal|Box on goal|Box|Player on goal|Player) at \((\d+), (\d+)\)")


def _strip(augmented, distractors):
    """The text with every distractor's `separator + text` taken out once (independently of `render`)."""
    for d in distractors:
        piece = d.separator + d.text
        assert piece in augmented, piece
        i = augmented.index(piece)
        augmented = augmented[:i] + augmented[i + len(piece):]
    return augmented


def _alf_distractor_names(distractors):
    """("mug", 3) for each ALFWorld distractor, read back from its text."""
    bank = D.load_bank("alfworld")
    objs = dict(bank.views[0].parts[0].words)["obj"]
    return [(objs[dict(d.words)["obj"]], d.entity_id) for d in distractors]


# ------------------------------------------------------------------------------------- counting rules


@pytest.mark.parametrize("eps", [0, 1, 11, 12, 13, 23, 24, 36, 200, 300, 300.5])
def test_alfworld_adds_floor_eps_over_12_sentences(eps):
    ds = D.sample_distractors("alfworld", ALF_OBS, 3, eps, admissible_actions=ALF_ACTIONS)
    aug = D.render(ALF_OBS, ds)
    assert len(ds) == math.floor(eps / 12) == D.count_units("alfworld", eps)["objects"]
    assert _strip(aug, ds) == ALF_OBS
    # every unit is one sentence of a bank template, put in right after a sentence end
    assert all(d.separator == " " and d.text.endswith(".") for d in ds)
    assert all(d.offset in (ALF_OBS.index("room.") + 5, len(ALF_OBS)) for d in ds)
    if eps >= 200:  # both slots get used
        assert {d.offset for d in ds} == {ALF_OBS.index("room.") + 5, len(ALF_OBS)}


@pytest.mark.parametrize("eps", [0, 1, 9, 10, 19, 20, 80, 85, 200])
def test_sokoban_adds_max_1_floor_eps_over_10_lines(eps):
    text = "Wall at (0, 0) Player at (1, 1)"
    aug = D.augment_text("sokoban", text, 0, eps, dim=6)
    k = 0 if eps == 0 else max(1, math.floor(eps / 10))
    lines = aug.split("\n")
    assert lines[0] == text and len(lines) == 1 + k
    assert all(SOKOBAN_LINE.fullmatch(line) for line in lines[1:])


def test_webshop_counts_per_page_kind():
    for eps in (0, 1, 24, 25, 30, 40, 59, 60, 100, 250, 1000):
        detail = D.count_units("webshop", eps, view="detail")
        on = eps > 0
        assert detail == {"features": on * max(1, eps // 25), "ads": on * max(1, eps // 30)}
        # the study: k = min(floor(eps/100 * alpha * 10), 10), alpha = 0.5 (eps = 100 gives 5)
        assert D.count_units("webshop", eps, view="search") == {"ads_and_fakes": min(math.floor(eps * 0.05), 10)}
    page = "WebShop [SEP] Instruction: [SEP] i need a red t-shirt [SEP] Back to Search"
    ds = D.sample_distractors("webshop", page, 1, 100, view="detail")
    assert [d.part for d in ds] == ["features"] * 4 + ["ads"] * 3
    aug = D.render(page, ds)
    assert aug.startswith(page + " [SEP] ") and aug.count(" [SEP] ") == page.count(" [SEP] ") + 7
    assert all(d.text.startswith("[AD] ") and d.text.endswith(" today!") for d in ds if d.part == "ads")
    search = D.sample_distractors("webshop", page, 2, 100, view="search")
    assert len(search) == 5
    assert all(re.fullmatch(r"\[AD\] .+ — shop .+ today!|Women .+ — likely unsuitable|Warning: .+ \(cannot be selected\)",
                            d.text) for d in search)
    many = D.sample_distractors("webshop", page, 3, 1000, view="search")
    assert len(many) == 10 and {d.template for d in many} == {0, 1, 2}  # ads and both fake forms mixed


def test_banks_hold_the_studys_word_lists():
    def lists(name, view=None, part=0):
        return {k: v for k, v in D.load_bank(name).view(view).parts[part].words}

    alf = lists("alfworld")
    assert (len(alf["obj"]), len(alf["desc"])) == (28, 19)
    assert {"bowl", "mug", "sponge", "lid"} <= set(alf["obj"]) and {"slightly burnt", "smudged"} <= set(alf["desc"])
    assert "You notice a {obj} that looks {desc}." in D.load_bank("alfworld").views[0].parts[0].templates
    sok = lists("sokoban")
    assert (len(sok["obj"]), len(sok["desc"])) == (7, 5) and "Leaking pipe" in sok["obj"]
    search, detail, ads = lists("webshop", "search"), lists("webshop", "detail"), lists("webshop", "detail", 1)
    assert [len(search[k]) for k in ("promo", "category", "fdesc", "product")] == [20, 20, 15, 14]
    assert len(detail["feature"]) == 14 and "fabric: machine wash cold" in detail["feature"]
    assert ads == {"promo": search["promo"], "category": search["category"]}
    for name, words in D.known_words(D.load_bank("alfworld")).items():  # no duplicates in any list
        assert len(set(words)) == len(words), name
    assert set(D.bank_names()) == {"alfworld", "cross_domain", "sciworld", "sokoban", "webshop"}
    for name in D.bank_names():
        assert D.load_bank(name).version == 1


# ------------------------------------------------------------------------------------- placement and ids


def test_sokoban_coordinates_are_always_outside_the_room():
    rows_beyond = cols_beyond = 0
    for h, w in ((1, 1), (5, 5), (6, 6), (7, 10), (10, 7)):
        context = {"dim": h} if h == w else {"height": h, "width": w}
        for seed in range(40):
            ds = D.sample_distractors("sokoban", "state", seed, 200, **context)
            assert len(ds) == 20
            for d in ds:
                r, c = map(int, SOKOBAN_LINE.fullmatch(d.text).groups()[:2])
                assert (r, c) == d.coords
                assert r >= h or c >= w, (h, w, r, c)
                assert 0 <= r < h + 2 and 0 <= c < w + 2  # the bank's margin
                rows_beyond += r >= h
                cols_beyond += c >= w
    assert rows_beyond and cols_beyond  # both sides of the room get used
    assert len(D.outside_cells(6, 6, 2)) == 8 * 8 - 36


def test_alfworld_ids_are_fresh_and_unique():
    entities = ["mug 1", "mug 2", "mug 3", "bowl 4", "cabinet 1", "cabinet 2", "countertop 1", "sinkbasin 1"]
    for seed in range(30):
        ds = D.sample_distractors("alfworld", ALF_OBS, seed, 300, admissible_actions=ALF_ACTIONS, entities=entities)
        names = _alf_distractor_names(ds)
        assert len(set(names)) == len(names) == 25  # no duplicates within a state
        for (obj, i), d in zip(names, ds):
            assert f"a {obj} {i} " in d.text or d.text.startswith(f"A {obj} {i} ")
            assert f"{obj} {i}" not in entities  # never a real entity, hidden ones included
            assert not any(re.search(rf"(?<!\w){obj} {i}\b", a) for a in ALF_ACTIONS)
        # a type the scene has continues after its highest real id; others start at 1 (or after entities)
        mugs = sorted(i for o, i in names if o == "mug")
        assert mugs == list(range(4, 4 + len(mugs)))
        bowls = sorted(i for o, i in names if o == "bowl")
        assert bowls == list(range(5, 5 + len(bowls)))
    # without the entity list, the observation and the admissible actions still count as real
    ds = D.sample_distractors("alfworld", ALF_OBS, 0, 3000, admissible_actions=ALF_ACTIONS)
    mugs = sorted(i for o, i in _alf_distractor_names(ds) if o == "mug")
    assert mugs and mugs[0] == 3  # mug 2 in the observation, mug 1 in the actions


def test_fresh_ids_rule():
    texts = ["You see a mug 2 and a soapbottle 7.", "take mug 5 from table 1", "butterknife 9"]
    assert D.fresh_ids(["mug", "mug", "bottle", "knife", "table"], texts) == [6, 7, 1, 1, 2]


def test_sciworld_lines_go_between_blocks_never_inside_a_listing():
    ds = D.sample_distractors("sciworld", SCI_OBS, 0, 120)
    assert len(ds) == 10
    aug = D.render(SCI_OBS, ds)
    assert _strip(aug, ds) == SCI_OBS
    lines = aug.split("\n")
    added = [i for i, line in enumerate(lines) if line in {d.text for d in ds}]
    assert len(added) == 10
    for i in added:  # its own line, not indented, and no listing line follows it
        assert not lines[i].startswith("\t") and (i + 1 == len(lines) or not lines[i + 1].startswith("\t"))
    assert [line for line in lines if line.startswith("\t")] == [x for x in SCI_OBS.split("\n") if x.startswith("\t")]
    assert D.insertion_slots(SCI_OBS, "line") == [SCI_OBS.index("\nYou also"), SCI_OBS.index("\nIn your"), len(SCI_OBS)]


def test_sentence_slots_skip_the_banner_and_mid_sentence_periods():
    obs = "-= Welcome to TextWorld, ALFRED! =-\n\nYou arrive at shelf 1. On the shelf 1, you see a vase 2."
    assert D.insertion_slots(obs, "sentence") == [obs.index(" On the"), len(obs)]
    assert D.insertion_slots("Nothing happens.", "sentence") == [16]
    assert D.insertion_slots("no sentence end here", "sentence") == [20]


def test_cross_domain_monitor_shows_another_domains_state():
    sok = "Wall at (0, 0) Wall at (0, 1) Box at (2, 3) Goal at (3, 3) Player at (4, 3)"
    ds = D.sample_distractors("cross_domain", ALF_OBS, 0, 30, other_states=[("sokoban", sok)])
    assert len(ds) == 1 and ds[0].source == 0 and ds[0].separator == "\n"
    aug = D.render(ALF_OBS, ds)
    assert aug.startswith(ALF_OBS + "\n") and "a box-pushing puzzle: \"" + sok + "\"" in aug  # 20 words fit
    short = D.render(ALF_OBS, D.sample_distractors("cross_domain", ALF_OBS, 0, 6, other_states=[("sokoban", sok)]))
    assert "a box-pushing puzzle: \"Wall at (0, 0) ...\"" in short  # floor(6/1.5) = 4 words, then "..."
    plain = D.augment_text("cross_domain", "x", 1, 300, other_states=["line one\n\tline two"])
    assert "another program: \"line one line two\"" in plain  # flattened onto one line, generic label
    picks = {D.sample_distractors("cross_domain", "x", s, 30, other_states=["a", "b", "c"])[0].source
             for s in range(30)}
    assert picks == {0, 1, 2}


# ------------------------------------------------------------------------------------- determinism, eps = 0, coin


def test_same_seed_same_text_and_fresh_draws_per_state():
    a = D.augment_text("alfworld", ALF_OBS, 7, 120, admissible_actions=ALF_ACTIONS)
    assert a == D.augment_text("alfworld", ALF_OBS, 7, 120, admissible_actions=ALF_ACTIONS)
    assert a == D.augment_text("alfworld", ALF_OBS, np.random.default_rng(7), 120, admissible_actions=ALF_ACTIONS)
    assert a != D.augment_text("alfworld", ALF_OBS, 8, 120, admissible_actions=ALF_ACTIONS)
    rng = np.random.default_rng(0)
    first, second = (D.augment_text("sokoban", "s", rng, 80, dim=6) for _ in range(2))
    assert first != second  # one generator across states: a fresh sample for every state
    assert D.sample_distractors("sokoban", "s", 5, 80, dim=6) == D.sample_distractors("sokoban", "s", 5, 80, dim=6)


def test_jax_keys_follow_the_documented_draw_contract():
    key = jax.random.PRNGKey(3)
    ds = D.sample_distractors("sokoban", "s", key, 80, dim=6)
    assert ds == D.sample_distractors("sokoban", "s", jax.random.key(3), 80, dim=6)  # typed key, same draws
    assert ds != D.sample_distractors("sokoban", "s", jax.random.PRNGKey(4), 80, dim=6)
    # each unit's draws come from fold_in(fold_in(key, part), unit): more epsilon only appends units
    assert D.sample_distractors("sokoban", "s", key, 40, dim=6) == ds[:4]
    # the contract, re-derived here: template, word lists in file order, slot, then the outside cell
    part = D.load_bank("sokoban").views[0].parts[0]
    cells = D.outside_cells(6, 6, 2)
    for u, d in enumerate(ds):
        b = [int(x) for x in jax.random.bits(jax.random.fold_in(jax.random.fold_in(key, 0), u), (5,), np.uint32)]
        words = dict(part.words)
        r, c = cells[b[4] % len(cells)]
        assert d.text == f"({r}, {c}) shows a {words['obj'][b[1] % 7]} ({words['desc'][b[2] % 5]}; unreachable)."
    with pytest.raises(ValueError, match="one PRNG key"):
        D.sample_distractors("sokoban", "s", jax.random.split(key, 3), 80, dim=6)


def test_epsilon_zero_is_the_identity():
    for name, text, context in (("alfworld", ALF_OBS, {"admissible_actions": ALF_ACTIONS}), ("sokoban", "s", {}),
                                ("sciworld", SCI_OBS, {}), ("webshop", "p [SEP] q", {"view": "search"}),
                                ("cross_domain", ALF_OBS, {})):
        for seed in range(3):
            assert D.augment_text(name, text, seed, 0, **context) == text
            assert D.sample_distractors(name, text, seed, 0.0, **context) == []


def test_apply_this_episode():
    assert not any(D.apply_this_episode(s, 0) for s in range(200))
    assert all(D.apply_this_episode(s, 1) for s in range(200))
    share = np.mean([D.apply_this_episode(s, 0.5) for s in range(2000)])
    assert 0.45 < share < 0.55
    assert D.apply_this_episode(11, 0.5) == D.apply_this_episode(np.random.default_rng(11), 0.5)
    keys = [jax.random.PRNGKey(s) for s in range(200)]
    flips = [D.apply_this_episode(k, 0.5) for k in keys]
    assert flips == [bool(jax.random.bernoulli(k, 0.5)) for k in keys] and 0.3 < np.mean(flips) < 0.7


# ------------------------------------------------------------------------------------- bad input


def _bank_file(tmp_path, edit):
    with open(D.load_bank("sokoban").path) as f:
        data = json.load(f)
    edit(data)
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_bad_input_errors_name_the_fix(tmp_path):
    for eps in (-1, -0.5, float("nan"), float("inf"), True, "80", None):
        with pytest.raises(ValueError, match="epsilon .* must be a finite number >= 0"):
            D.augment_text("sokoban", "s", 0, eps, dim=6)
    with pytest.raises(ValueError, match=r"unknown distractor bank 'sokobna'.*shipped banks \['alfworld'"):
        D.augment_text("sokobna", "s", 0, 80)
    with pytest.raises(ValueError, match="file 'missing/bank.json' does not exist"):
        D.load_bank("missing/bank.json")
    for p in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"p \(the probability .*\) must be a number in \[0, 1\]"):
            D.apply_this_episode(0, p)
    for rng in (-1, 1.5, "seed", None):
        with pytest.raises(ValueError, match="rng must be a numpy.random.Generator, a non-negative int seed or a JAX"):
            D.augment_text("sokoban", "s", rng, 80, dim=6)
    with pytest.raises(ValueError, match="need the room's size: pass height=H, width=W \\(or dim=D\\)"):
        D.augment_text("sokoban", "s", 0, 80)
    with pytest.raises(ValueError, match="either dim=D .* or height=H, width=W, not both"):
        D.augment_text("sokoban", "s", 0, 80, dim=6, height=6)
    with pytest.raises(ValueError, match=r"unknown context key\(s\) \['admisible_actions'\]"):
        D.augment_text("alfworld", ALF_OBS, 0, 80, admisible_actions=ALF_ACTIONS)
    with pytest.raises(ValueError, match="admissible_actions must be a list of strings"):
        D.augment_text("alfworld", ALF_OBS, 0, 80, admissible_actions="go to cabinet 1")
    with pytest.raises(ValueError, match="need other_states"):
        D.augment_text("cross_domain", ALF_OBS, 0, 80)
    with pytest.raises(ValueError, match=r"several views \['search', 'detail'\]: pass view="):
        D.augment_text("webshop", "p", 0, 80)
    with pytest.raises(ValueError, match="has no view 'cart'"):
        D.augment_text("webshop", "p", 0, 80, view="cart")
    with pytest.raises(ValueError, match="slots must be a non-empty list of character offsets in \\[0, 1\\]"):
        D.augment_text("sokoban", "s", 0, 80, dim=6, slots=[5])
    ds = D.sample_distractors("sokoban", "a longer state", 0, 80, dim=6)
    with pytest.raises(ValueError, match="render the distractors into the text they were sampled for"):
        D.render("short", ds)
    with pytest.raises(ValueError, match="text must be a str"):
        D.augment_text("sokoban", b"s", 0, 80, dim=6)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=2), "version 2 is newer than this code reads"),
    (lambda d: d.update(format="other"), "'format' must be 'agentrl-distractor-bank'"),
    (lambda d: d.update(view={}), r"unknown key\(s\) \['view'\]"),
    (lambda d: d["views"]["state"].update(placement="middle"), "'placement' must be one of"),
    (lambda d: d["views"]["state"]["parts"][0].update(templates=["{r} {colour}"]), r"uses \['colour'\]"),
    (lambda d: d["views"]["state"]["parts"][0].update(templates=["{obj!r}"]), "fields must be plain names"),
    (lambda d: d["views"]["state"]["parts"][0]["words"].update(obj=[]), "word list 'obj' must be a non-empty list"),
    (lambda d: d["views"]["state"]["parts"][0].update(count={"tokens_per_unit": 0}), "'tokens_per_unit' must be a positive"),
    (lambda d: d["views"]["state"]["parts"][0].update(count={"tokens_per_unit": 10, "min_units": 3, "max_units": 2}),
     "max_units 2 is below min_units 3"),
    (lambda d: d["views"]["state"]["parts"][0].update(entity="desc"), "at most one of"),
    (lambda d: d["views"]["state"]["parts"][0].update(coords={"margin": 0}), "'margin' must be a positive integer"),
])
def test_malformed_bank_files_say_what_to_fix(tmp_path, edit, message):
    path = _bank_file(tmp_path, edit)
    with pytest.raises(D.BankError, match=message) as e:
        D.load_bank(path)
    assert path in str(e.value) and "format: see envs/distractors/bank.py" in str(e.value)


def test_users_own_bank_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(D.BankError, match="not valid JSON"):
        D.load_bank(str(tmp_path / "bad.json"))
    path = _bank_file(tmp_path, lambda d: d["views"]["state"]["parts"][0].update(
        templates=["Far away at ({r}, {c}) lies a {obj}."], count={"tokens_per_unit": 5}))
    aug = D.augment_text(path, "s", 0, 10, dim=4)
    assert re.fullmatch(r"s(\nFar away at \(\d+, \d+\) lies a [A-Za-z ]+\.){2}", aug)


# ------------------------------------------------------------------------------------- real episodes


def _parse_board(text, dim):
    """What an agent reading the coords render learns: the level (ignores everything else in the text)."""
    walls, targets, boxes = (np.zeros((dim, dim), bool) for _ in range(3))
    player = None
    for kind, r, c in CELL.findall(text):
        r, c = int(r), int(c)
        walls[r, c] |= kind == "Wall"
        targets[r, c] |= "on goal" in kind or kind == "Goal"
        boxes[r, c] |= kind.startswith("Box")
        if kind.startswith("Player"):
            player = np.array([r, c], np.int32)
    return sk.Level(walls, targets, boxes, player)


def test_sokoban_bfs_plans_still_solve_on_augmented_states():
    env = sk.SokobanTextEnv(dim=6, num_boxes=1, max_steps=30)
    rng = np.random.default_rng(0)
    for seed in range(3):
        ts = env.reset(seed)
        plan = env.expert_actions()
        assert plan
        for word in plan:
            aug = D.augment_text("sokoban", ts.observation, rng, 80, dim=env.env.dim)
            assert aug != ts.observation and aug.startswith(ts.observation + "\n")
            # the board an agent reads from the augmented text is the real one, so it plans the same moves
            seen = _parse_board(aug, 6)
            real = sk.level_from_state(env.state)
            for a, b in zip(seen, real):
                np.testing.assert_array_equal(a, np.asarray(b))
            assert [sk.ACTION_WORDS[a] for a in sk.solve(seen)] == env.expert_actions()
            ts = env.step(word)
        assert ts.success and ts.done and ts.reward == 10.0


@pytest.mark.alfworld
def test_alfworld_walkthroughs_still_win_with_augmented_observations():
    pytest.importorskip("alfworld", reason="alfworld not installed (pip install alfworld==0.4.2)")
    from envs.alfworld import AlfWorldEnv, task_type_of

    env = AlfWorldEnv(split="train", max_steps=60)
    rng = np.random.default_rng(0)
    types = set()
    try:
        for seed in (0, 8, 16, 20):  # look, clean, heat, pick-two: four of the six task types
            ts = env.reset(seed)
            types.add(task_type_of(env.game_file))
            entities = ts.info["entities"]  # every numbered entity of the game, hidden ones included
            assert len(entities) > 10 and all(re.fullmatch(r"\S+ \d+", e) for e in entities)
            real = set(entities)
            plan = env.expert_actions()
            for t, action in enumerate(plan):
                actions = ts.admissible_actions
                ds = D.sample_distractors("alfworld", ts.observation, rng, 300, admissible_actions=actions,
                                          entities=entities)
                aug = D.render(ts.observation, ds)
                assert len(ds) == 25 and _strip(aug, ds) == ts.observation
                names = _alf_distractor_names(ds)
                assert len(set(names)) == 25
                fake = {f"{o} {i}" for o, i in names}
                assert not fake & real  # no distractor is (or shadows) a real entity
                assert not any(re.search(rf"(?<!\w){re.escape(f)}\b", a) for f in fake for a in actions)
                # the expert's command is admissible and names only real entities
                assert action in actions and not any(re.search(rf"(?<!\w){re.escape(f)}\b", action) for f in fake)
                assert ts.admissible_actions == actions  # augmentation touched nothing of the step
                ts = env.step(action)
            assert ts.success and ts.done and ts.reward == 10.0, (seed, ts.info)
    finally:
        env.close()
    assert len(types) == 4


@pytest.mark.java
def test_sciworld_gold_path_still_wins_and_features_name_no_real_object():
    pytest.importorskip("scienceworld", reason="needs the scienceworld package")
    if shutil.which("java") is None:
        pytest.skip("needs a Java runtime on PATH for ScienceWorld")
    from envs.sciworld import SciWorldEnv

    rng = np.random.default_rng(0)
    tasks = ["find-animal", "lifespan-longest-lived", "power-component"]  # cheap gold paths, three topics
    with SciWorldEnv(task_names=tasks) as env:
        seen = set()
        for seed in range(len(tasks)):  # consecutive seeds cycle through the tasks
            ts = env.reset(seed)
            seen.add(ts.info.get("task_name"))
            gold = env.expert_actions()
            for action in gold:
                objects = ts.info["admissible_objects"]
                ds = D.sample_distractors("sciworld", ts.observation, rng, 120)
                aug = D.render(ts.observation, ds)
                assert len(ds) == 10 and _strip(aug, ds) == ts.observation
                for d in ds:  # nothing a distractor says names one of the simulator's objects here
                    assert not [o for o in objects if re.search(rf"\b{re.escape(o)}\b", d.text)], (d.text, objects)
                ts = env.step(action)
                if ts.done:
                    break
            assert ts.success, (seed, ts.info)
        assert len(seen) == len(tasks), seen


def test_cli_prints_a_plain_and_an_augmented_state(capsys):
    from envs.distractors.__main__ import main

    assert main(["--domain", "sokoban", "--epsilon", "80", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    plain, aug = out.split("--- plain")[1].split("--- augmented")
    assert "units: lines=8" in out and aug.count("unreachable") == 8 and plain.count("unreachable") == 0
    assert main(["--domain", "sokoban", "--epsilon", "-1"]) == 2
    assert "epsilon" in capsys.readouterr().err
    pytest.importorskip("bm25s", reason="WebShop needs bm25s (pip install -e '.[envs]')")
    assert main(["--domain", "webshop", "--epsilon", "30", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "units: ads_and_fakes=1" in out and "Page 1 (Total results" in out
    assert main(["--domain", "webshop", "--view", "detail", "--epsilon", "30", "--seed", "0"]) == 0
    assert "units: features=1, ads=1" in capsys.readouterr().out
