"""fastxent.transformers on tiny random models built offline from their configurations: the
patched loss and every parameter's gradient equal the model's own (docs/transformers.md)."""

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fastxent.transformers as fxh  # noqa: E402

pytestmark = pytest.mark.torch

V = 96


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))


def _gemma2():  # a soft-cap small enough to bend the logits
    return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        final_logit_softcapping=0.75))


def _gpt2():  # a head tied to the input embeddings
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
        eos_token_id=0))


def _cohere():  # logits * logit_scale
    return transformers.CohereForCausalLM(transformers.CohereConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, logit_scale=0.5, pad_token_id=0,
        bos_token_id=1, eos_token_id=2))


def _granite():  # logits / logits_scaling
    return transformers.GraniteForCausalLM(transformers.GraniteConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0))


def _mixtral():  # a router's auxiliary loss added to the loss
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.1))


def _with_bias():  # a head with a bias: Llama's head replaced by one that has it
    model = _llama()
    head = torch.nn.Linear(16, V, bias=True)
    model.lm_head = head
    return model


MODELS = {"llama": _llama, "qwen2": _qwen2, "gemma2": _gemma2, "gpt2": _gpt2,
          "cohere": _cohere, "granite": _granite, "mixtral": _mixtral, "bias": _with_bias}


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]().eval()  # (no dropout: the two runs see the same network)
    with torch.no_grad():  # logits large enough to test the soft-cap and scales
        for p in model.parameters():
            p.mul_(4.0) if p.ndim == 2 else p.add_(0.1 * torch.randn_like(p))
    return model


def _batch(seed=1, b=3, t=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt not trained on
    labels[2, -3:] = -100
    mask = torch.ones(b, t, dtype=torch.long)
    mask[2, -3:] = 0  # padding
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = out.loss if not isinstance(out, tuple) else out[0]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, out


def _assert_same(own, fused):
    (loss0, grads0, _), (loss1, grads1, _) = own, fused
    assert loss1.dtype == torch.float32
    torch.testing.assert_close(loss1, loss0, rtol=2e-6, atol=0)
    assert grads1.keys() == grads0.keys()
    for name, g0 in grads0.items():
        scale = g0.abs().max().item() + 1e-30
        torch.testing.assert_close(grads1[name], g0, rtol=0, atol=2e-5 * scale, msg=name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_and_every_gradient_equal_the_models_own(name):
    model = _model(name)
    inputs = _batch()
    own = _loss_and_grads(model, **inputs)
    fxh.patch(model)
    fused = _loss_and_grads(model, **inputs)
    assert fused[2].logits is None
    _assert_same(own, fused)
    if name == "mixtral":  # the auxiliary loss is in both
        assert fused[2].aux_loss is not None and fused[2].aux_loss.item() > 0


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_loss_options_of_transformers(name):
    """num_items_in_batch (gradient accumulation), shift_labels, return_dict=False, and
    logits_to_keep with the labels of the kept positions."""
    model = _model(name)
    inputs = _batch()
    fused_model = fxh.patch(copy.deepcopy(model))
    n = torch.tensor(29)
    shift = torch.roll(inputs["labels"], -2, dims=1)
    cases = [dict(num_items_in_batch=n), dict(shift_labels=shift),
             dict(return_dict=False),
             dict(logits_to_keep=5, shift_labels=shift[:, -5:].contiguous())]
    for extra in cases:
        own = _loss_and_grads(model, **inputs, **extra)
        fused = _loss_and_grads(fused_model, **inputs, **extra)
        _assert_same(own, fused)


def test_logits_to_keep_with_labels_of_every_position_is_refused():
    model = fxh.patch(_model("llama"))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(**_batch(), logits_to_keep=4)


def test_without_labels_the_model_is_its_own():
    model = _model("gemma2")
    inputs = _batch()
    del inputs["labels"]
    with torch.no_grad():
        own = model(**inputs).logits
        with fxh.patched(model):
            fused = model(**inputs)
            assert model.generate(inputs["input_ids"][:1], max_new_tokens=3,
                                  do_sample=False).shape == (1, 15)
    torch.testing.assert_close(fused.logits, own, rtol=0, atol=0)


def test_revert_and_the_context_manager():
    model = _model("llama")
    assert not fxh.is_patched(model)
    assert fxh.revert(model) is model  # (not patched: unchanged)
    assert fxh.patch(model) is model and fxh.is_patched(model)
    fxh.patch(model, chunk_size=5)  # again: the options replaced, still one patch
    with fxh.patched(model, chunk_size=7):
        assert model._fastxent_patch.chunk_size == 7
    assert model._fastxent_patch.chunk_size == 5  # the earlier patch kept
    fxh.revert(model)
    assert not fxh.is_patched(model) and "forward" not in model.__dict__
    assert model(**_batch()).logits.shape == (3, 12, V)


def test_a_deep_copy_is_patched_on_its_own_weights():
    model = fxh.patch(_model("llama"))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.zero_()  # every logit 0: the loss is log V
    loss = twin(**_batch()).loss
    torch.testing.assert_close(loss, torch.tensor(float(torch.log(torch.tensor(V * 1.0)))))
    assert model(**_batch()).loss > 0


def test_chunks_and_accum_dtype_give_the_same_loss():
    model = _model("qwen2")
    inputs = _batch()
    own = _loss_and_grads(model, **inputs)
    with fxh.patched(model, chunk_size=4, accum_dtype=torch.float64):
        _assert_same(own, _loss_and_grads(model, **inputs))


class _Shifted(transformers.LlamaForCausalLM):
    """A family that changes its logits after the head in a way fastxent does not know."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden_states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        logits = self.lm_head(hidden_states)
        logits = logits + 1.0
        loss = self.loss_function(logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


def test_models_it_cannot_fuse_are_refused_by_name():
    config = _llama().config
    with pytest.raises(TypeError, match="takes no labels"):
        fxh.patch(transformers.LlamaModel(config))
    headless = _model("llama")
    headless.lm_head = None
    with pytest.raises(TypeError, match="no output embeddings"):
        fxh.patch(headless)
    with pytest.raises(NotImplementedError, match=r"logits \+ 1\.0"):
        fxh.patch(_Shifted(config))
    with pytest.raises(TypeError, match="transformers model"):
        fxh.patch(object())
    model = _model("llama")
    model.lm_head = torch.nn.Sequential(torch.nn.Linear(16, V))
    with pytest.raises(TypeError, match="Sequential, not a torch.nn.Linear"):
        fxh.patch(model)
    with pytest.raises(ValueError, match="chunk_size"):
        fxh.patch(_model("llama"), chunk_size=0)
    assert "forward" not in model.__dict__  # a refused patch changed nothing


def test_bfloat16_model():
    model = _model("llama").to(torch.bfloat16)
    inputs = _batch()
    own = _loss_and_grads(model, **inputs)
    fused = _loss_and_grads(fxh.patch(model), **inputs)
    # the logits are rounded to bfloat16 before the loss in both
    torch.testing.assert_close(fused[0], own[0], rtol=2e-3, atol=0)


def test_trainer_gives_the_same_loss_curve(tmp_path):
    """20 steps of transformers.Trainer with gradient accumulation (num_items_in_batch), then
    its evaluation loss."""
    pytest.importorskip("accelerate")
    g = torch.Generator().manual_seed(3)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, V, (80, 16),
                                                                        generator=g)]

    def curve(patch):
        model = _model("llama")
        if patch:
            fxh.patch(model)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(patch)), per_device_train_batch_size=2,
            gradient_accumulation_steps=2, max_steps=20, learning_rate=1e-3, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                       eval_dataset=rows[:8])
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return losses + [trainer.evaluate()["eval_loss"]]

    own, fused = curve(False), curve(True)
    assert len(own) == 21
    assert fused == pytest.approx(own, rel=1e-4)


# evaluation of a model: fastxent.transformers.evaluate, windows, fastxent eval-model

def _own_logits_stats(model, inputs):
    """The Evaluator's figures from the model's own (materialised) logits."""
    import fastxent as fx

    ev = fx.Evaluator(topk=(1, 3, 10))
    for batch in inputs:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        ev.update(logits[:, :-1].float().numpy(), batch["labels"][:, 1:].numpy())
    return ev.result()


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2", "cohere"])
def test_evaluate_equals_the_models_logits_and_loss(name):
    model = _model(name)
    batches = [_batch(seed=s) for s in (1, 2)]
    got = fxh.evaluate(model, batches, topk=(1, 3, 10))
    want = _own_logits_stats(model, batches)
    assert got.tokens == want.tokens > 0
    # rank and argmax exactly as from the logits: every figure made of them is equal
    assert (got.accuracy, got.topk, got.mrr) == (want.accuracy, want.topk, want.mrr)
    assert got.nll == pytest.approx(want.nll, rel=2e-6)
    assert got.entropy == pytest.approx(want.entropy, rel=2e-5)
    # and the model's own loss-based figure: its summed loss over the scored tokens
    with torch.no_grad():
        total = sum(model(**b, num_items_in_batch=1).loss.item() for b in batches)
    assert got.nll == pytest.approx(total / got.tokens, rel=2e-6)
    assert fxh.evaluate(fxh.patch(model), batches).nll == pytest.approx(got.nll, rel=1e-12)


def test_evaluate_defaults_and_checks():
    import fastxent as fx

    model = _model("llama")
    batch = _batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # without labels: the input ids scored, the masked positions ignored
    got = fxh.evaluate(model, [{"input_ids": ids, "attention_mask": mask}])
    want = fxh.evaluate(model, [{"input_ids": ids, "attention_mask": mask,
                                 "labels": ids.masked_fill(mask == 0, -100)}])
    assert got == want and got.tokens == 3 * 11 - 3
    assert fxh.evaluate(model, [ids]).tokens == 33  # a bare tensor of ids
    soft = fxh.evaluate(model, [ids], temperature=2.0)
    assert soft.entropy > fxh.evaluate(model, [ids]).entropy
    ev = fx.Evaluator(topk=(1,))
    fxh.evaluate(model, [ids], evaluator=ev)
    assert fxh.evaluate(model, [ids], evaluator=ev).tokens == 66  # accumulated
    with pytest.raises(ValueError, match="ignores 0"):
        fxh.evaluate(model, [ids], evaluator=fx.Evaluator(ignore_index=0))
    with pytest.raises(ValueError, match="needs input_ids"):
        fxh.evaluate(model, [{"attention_mask": mask}])
    with pytest.raises(ValueError, match="temperature"):
        fxh.evaluate(model, [ids], temperature=0)


def _guide_perplexity(model, ids, max_length, stride):
    """The transformers perplexity guide's loop, with the model's own loss, its mean weighted by
    the tokens it averaged."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq_len = ids.shape[1]
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        target = window.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids=window, labels=target).loss
        # the tokens the loss averaged: the labels after the shift (the guide subtracts one
        # per window, which undercounts every window after the first, whose first label is
        # -100 already)
        n = (target[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * n
        n_tokens += n
        prev_end = end
        if end == seq_len:
            break
    return nll_sum / n_tokens, n_tokens


def test_windows_as_the_perplexity_guide():
    model = _model("llama")
    ids = torch.randint(0, V, (1, 45), generator=torch.Generator().manual_seed(5))
    want, n = _guide_perplexity(model, ids, 16, 6)
    got = fxh.evaluate(model, fxh.windows(ids, 16, 6))
    assert got.tokens == n == 44  # every token but the first, once
    assert got.nll == pytest.approx(want, rel=2e-6)
    assert [w["input_ids"].shape[1] for w in fxh.windows(ids, 16, 15)] == [16, 16, 15]
    with pytest.raises(ValueError, match="stride=16 must be less than max_length"):
        fxh.windows(ids, 16, 16)  # (the first token of each window would not be scored)
    with pytest.raises(ValueError, match="max_length"):
        fxh.windows(ids, 1, 1)
    with pytest.raises(ValueError, match="at least two"):
        fxh.windows(ids[:, :1], 4, 2)


def _saved_model(tmp_path):
    """A tiny Llama and a word-level tokenizer saved as a model directory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]"] + [f"w{i}" for i in range(V - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    model = _model("llama")
    path = tmp_path / "model"
    model.save_pretrained(path)
    fast.save_pretrained(path)
    g = torch.Generator().manual_seed(6)
    text = " ".join(words[int(i)] for i in torch.randint(1, V, (70,), generator=g))
    (tmp_path / "text.txt").write_text(text + "\n")
    return model, fast, path, tmp_path / "text.txt", text


def test_eval_model_command(tmp_path, capsys):
    import json

    from fastxent.cli import main

    model, tokenizer, path, text_file, text = _saved_model(tmp_path)
    assert main(["eval-model", str(path), str(text_file), "--max-length", "24", "--stride",
                 "10", "--json", "--topk", "1,5"]) == 0
    report = json.loads(capsys.readouterr().out)
    ids = tokenizer(text, return_tensors="pt").input_ids
    want, n = _guide_perplexity(model, ids, 24, 10)
    assert report["tokens"] == n == 69 and report["windows"] == 6
    assert report["nll"] == pytest.approx(want, rel=2e-6)
    assert set(report["topk"]) == {"1", "5"}
    assert main(["eval-model", str(path), str(text_file), "--max-length", "24"]) == 0
    assert "perplexity" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval-model", str(tmp_path / "none"), str(text_file)])
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["llama", "gemma2", "cohere"])
def test_logprobs_and_entropy_with_every_gradient(name):
    """fastxent.transformers.logprobs against log_softmax of the model's own logits."""
    model = _model(name)
    batch = _batch()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    g = torch.Generator().manual_seed(9)
    up = torch.randn(2, 3, 11, generator=g)

    def own():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / 0.8
        logp = torch.log_softmax(logits, -1)
        target = labels[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        counted = target != -100
        lp = torch.where(counted, logp.gather(-1, target.clamp(min=0)[..., None])[..., 0], 0.0)
        ent = torch.where(counted, -(logp.exp() * logp).sum(-1), 0.0)
        return lp, ent

    def fused():
        return fxh.logprobs(model, ids, attention_mask=mask, labels=labels, temperature=0.8,
                            return_entropy=True, chunk_size=5)

    results = []
    for f in (own, fused):
        model.zero_grad(set_to_none=True)
        lp, ent = f()
        ((lp * up[0]).sum() + (ent * up[1]).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((lp.detach(), ent.detach(), grads))
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    assert lp1.shape == (3, 11) and (lp1[0, :3] == 0).all()
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent1, ent0, rtol=0, atol=2e-5)
    assert g1.keys() == g0.keys()
    for n, g in g0.items():
        torch.testing.assert_close(g1[n], g, rtol=0, atol=5e-5 * (g.abs().max().item() + 1e-30),
                                   msg=n)


# what the review of the patch found: autocast, other ways of changing the logits, outputs

def test_autocast_as_the_models_own():
    """A float32 model under bfloat16 autocast (Trainer(bf16=True)): the head's product in
    bfloat16 as F.linear's, the loss in float32."""
    model = _model("llama")
    inputs = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own = _loss_and_grads(model, **inputs)
        fused = _loss_and_grads(fxh.patch(model), **inputs)
    assert fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], own[0], rtol=1e-2, atol=0)
    for name, g in own[1].items():
        assert fused[1][name].dtype == torch.float32
        torch.testing.assert_close(fused[1][name], g, rtol=0,
                                   atol=0.05 * g.abs().max().item(), msg=name)


def test_outputs_as_the_models_own():
    model = _model("mixtral")
    inputs = _batch()
    fused_model = fxh.patch(copy.deepcopy(model))
    own, fused = model(**inputs), fused_model(**inputs)
    assert list(fused.keys())[0] == "loss" and fused[0] is fused.loss
    assert fused.to_tuple()[0] is fused.loss and "logits" not in fused.keys()
    torch.testing.assert_close(fused.loss, own.loss, rtol=2e-6, atol=0)
    # return_dict=False: a tuple, the loss first, the auxiliary loss still in it
    own_t = model(**inputs, return_dict=False)
    fused_t = fused_model(**inputs, return_dict=False)
    assert isinstance(fused_t, tuple)
    torch.testing.assert_close(fused_t[0], own_t[0], rtol=2e-6, atol=0)


def test_a_pickled_model_stays_patched(tmp_path):
    model = fxh.patch(_model("llama"))
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert fxh.is_patched(loaded)
    out = loaded(**_batch())
    assert out.logits is None
    torch.testing.assert_close(out.loss, model(**_batch()).loss)


class _OnTheHeadLine(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden_states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        logits = self.lm_head(hidden_states) * 2.0
        loss = self.loss_function(logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class _SliceAssigned(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden_states = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        lm_logits = self.lm_head(hidden_states)
        lm_logits[:, :, :4] = -1e4
        loss = self.loss_function(lm_logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=lm_logits)


def _without_source(cls):
    """A family whose forward has no readable source and changes its logits: what the first
    call's check of the logits catches."""
    namespace = {}
    exec("def forward(self, input_ids=None, labels=None, return_dict=None, **kwargs):\n"
         "    h = self.model(input_ids=input_ids, **kwargs).last_hidden_state\n"
         "    logits = self.lm_head(h) + 0.5\n"
         "    return transformers.modeling_outputs.CausalLMOutputWithPast(logits=logits)\n",
         {"transformers": transformers}, namespace)
    return type("NoSource", (cls,), {"forward": namespace["forward"]})


def test_changes_of_the_logits_it_cannot_see_are_refused():
    config = _llama().config
    with pytest.raises(NotImplementedError, match=r"\* 2\.0"):
        fxh.patch(_OnTheHeadLine(config))
    with pytest.raises(NotImplementedError, match=r"lm_logits\[:, :, :4\] = -1e4"):
        fxh.patch(_SliceAssigned(config))
    model = fxh.patch(_without_source(transformers.LlamaForCausalLM)(config))
    with pytest.raises(NotImplementedError, match="logits are not those of its output layer"):
        model(**_batch())
    with pytest.raises(NotImplementedError, match="logits are not those"):
        fxh.evaluate(model, [_batch()["input_ids"]])
    with pytest.raises(NotImplementedError, match="logits are not those"):
        fxh.logprobs(model, _batch()["input_ids"])


def test_losses_of_their_own_and_encoder_decoders_are_refused():
    def bart():  # (BartForCausalLM changes the configuration it is given)
        return transformers.BartConfig(vocab_size=V, d_model=16, encoder_layers=1,
                                       decoder_layers=1, encoder_attention_heads=2,
                                       decoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_ffn_dim=32)

    with pytest.raises(NotImplementedError, match="its forward's own"):
        fxh.patch(transformers.BartForCausalLM(bart()))  # an unshifted cross-entropy
    with pytest.raises(NotImplementedError, match="encoder-decoder"):
        fxh.patch(transformers.BartForConditionalGeneration(bart()))


def test_an_instance_forward_of_its_own_is_kept():
    """A model whose instance already has a forward of its own, taking *args and **kwargs (as
    accelerate's hooks install): the patch wraps it, and revert restores it."""
    import functools

    model = _model("llama")
    calls = []

    def hooked(module, *args, **kwargs):
        calls.append(1)
        return type(module).forward(module, *args, **kwargs)

    own_forward = functools.partial(hooked, model)
    model.forward = own_forward
    inputs = _batch()
    own = _loss_and_grads(model, **inputs)
    fused = _loss_and_grads(fxh.patch(model), **inputs)
    assert fused[2].logits is None and len(calls) == 2
    _assert_same(own, fused)
    assert fxh.revert(model).forward is own_forward


def test_torch_compile_of_a_patched_model():
    model = _model("llama")
    inputs = _batch()
    own = _loss_and_grads(model, **inputs)
    compiled = torch.compile(fxh.patch(model), backend="aot_eager")
    for _ in range(2):  # the first call checks the logits; the second does not
        loss, grads, out = _loss_and_grads(compiled, **inputs)
        grads = {n.removeprefix("_orig_mod."): g for n, g in grads.items()}
        _assert_same(own, (loss, grads, out))
