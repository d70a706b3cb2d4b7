# Mutants of the exercises outside 02_ops and 03_init (issue #25): for each exercise, small wrong edits of its
# reference lines, (find, replace) with `find` occurring once in the region; each must fail the exercise's checks.
MUTANTS = {
    # 01_autograd
    "autograd._topo_sort": [("topo_order.append(node)", "topo_order.insert(0, node)"),        # pre-order, reversed
                            ("if child in visited or ", "if "),                               # nodes visited twice
                            ("(only_requiring_grad and not child.requires_grad)", "False")],  # the flag ignored
    "autograd._backward_pass": [("sum_node_list(contributions)", "contributions[0]"),           # first use only
                                ("sum_node_list(contributions)", "sum_node_list(contributions[1:])")],
    "autograd._backward_pass#2": [("grads_of[inp].append(inp_grad)", "grads_of[inp] = [inp_grad]"),  # overwrite
                                  ("else: grads_of[inp] = [inp_grad]", "else: grads_of[inp] = [inp_grad, inp_grad]")],
}
MUTANTS.update({
    # 04_nn_module
    "nn._search": [("elif isinstance(value, (list, tuple)):", "elif isinstance(value, list):"),   # tuples missed
                   ('f"{prefix}.{i}"', 'f"{prefix}{i}"'),                                      # the dot lost
                   ("for key, item in value.items()", "for key, item in list(value.items())[:1]")],
    "nn._named_modules": [("memo.add(id(module))", "pass"),                                     # shared child twice
                          ("yield prefix, module", "pass"),                                     # itself left out
                          ("if id(module) in memo: return", "pass")],
    "nn._named_modules#2": [("_join(prefix, name)", "name"),                                    # no dotted path
                            ("if child is not None: yield from", "if child is not None and not name.isdigit(): yield from"),
                            ("if child is not None: yield from", 'if child is not None and prefix == "": yield from')],
    "nn.train": [("bool(mode)", "True"), ('_named_modules(self, "", set())', '[("", self)]'),
                 ('"training"', '"_training"')],
    "nn._state_items": [('name not in d["_non_persistent_buffers"]', "True"),
                        ('prefix + name + "."', "prefix + name"),
                        ('_own(module, "_buffers", Buffer)', "[]")],
    "nn.load_state_dict": [("k not in state_dict]", "k in state_dict]"),
                           ("unexpected = [k for k in state_dict if k not in own]", "unexpected = []")],
    "nn.load_state_dict#2": [("tensor.cached_data = array", "tensor.cached_data = tensor.cached_data"),
                             ("in updates:", "in updates[1:]:")],
})
MUTANTS.update({
    # 04a_nn_layers
    "nn.Linear.__init__": [("init.kaiming_uniform(in_features, out_features,", "init.kaiming_uniform(out_features, in_features,"),
                           ("init.kaiming_uniform(out_features, 1,", "init.kaiming_uniform(1, out_features,"),
                           (".reshape((1, out_features))", ".reshape((out_features,))")],
    "nn.Linear.forward": [("return out + bias if", "return out - bias if"),
                          ("out.ndim != 1", "True"),
                          ('out = X @ params["weight"]', 'out = X @ (params["weight"] * 1.001)')],
    "nn.ReLU.forward": [("ops.relu(x)", "x"), ("ops.relu(x)", "ops.relu(x - 0.01)")],
    "nn.Sequential.forward": [("x = module(x)", "y = module(x)"),
                              ("self._modules.values()", "list(self._modules.values())[:-1]"),
                              ("self._modules.values()", "reversed(self._modules.values())")],
    "nn.Residual.forward": [("self.fn(x) + x", "self.fn(x)"), ("+ x", "- x")],
    "nn.Dropout.forward": [("p=1 - self.p", "p=self.p"),
                           ("(1 / (1 - self.p))", "(1 / self.p)"),
                           ("if not self.training or self.p == 0: return x", "if self.p == 0: return x")],
    "nn.BatchNorm1d._normalize": [("self.eps, stats", "1e-5, stats"),
                                  ("stats = (self.running_mean.cached_data, self.running_var.cached_data)",
                                   "stats = (self.running_var.cached_data, self.running_mean.cached_data)"),
                                  ("self.running_var.cached_data)", "self.running_var.cached_data + 1)")],
    "nn.BatchNorm1d._normalize#2": [("(1 - m) * buffer.cached_data + m * stat", "m * buffer.cached_data + (1 - m) * stat"),
                                    ("(self.running_var, op.var)", "(self.running_var, op.mean)"),
                                    ("ops_norm.BatchNorm(1, self.eps)", "ops_norm.BatchNorm(1, 1e-5)")],
    "ops_norm.layer_norm_reference": [("power_scalar(var + eps, -0.5)", "power_scalar(var, -0.5)"),
                                      ("centered * centered, axes), kept) / n", "centered * centered, axes), kept) / (n - 1)"),
                                      ("out = out + bias", "out = out - bias"),
                                      ("centered = x - reshape(summation(x, axes), kept) / n",
                                       "centered = x - reshape(summation(x, axes), kept)")],
    "nn.CrossEntropyLoss.forward": [("self.reduction)", '"sum")'),
                                    ("(logits, y_one_hot", "(logits * 0.5, y_one_hot"),
                                    ("dtype=logits.dtype)", "dtype=logits.dtype) * 0.9")],
})
MUTANTS.update({
    # 05_optim
    "optim.SGD.step": [("grad + c_wd * w", "grad - c_wd * w"), ("u *= c_m", "u *= c_1m"),
                       ("u = c_1m * grad", "u = grad"), ("update = u * c_lr", "update = grad * c_lr")],
    "optim.Adam.step": [("1 - beta2 ** self.t", "1 - beta2"), ("(1 - beta1 ** self.t)", "(1 - beta1)"),
                        ("eps * root_bc2", "eps")],
    "optim.Adam.step#2": [("v += c_b2 * (grad * grad)", "v += c_b2 * grad"), ("m *= b1", "m *= c_b1"),
                          ("m, v = c_b1 * grad, c_b2 * (grad * grad)", "m, v = grad, grad * grad"),
                          ("denom += c_eps", "denom -= c_eps"),
                          ("if weight_decay: grad = grad + c_wd * w", "pass")],
})
MUTANTS.update({
    # 06_data
    "data.RandomFlipHorizontal.__call__": [("np.random.rand() < self.p", "np.random.rand() > self.p"),
                                           ("img[:, ::-1, :]", "img[::-1, :, :]"),
                                           ("flip_img = np.random.rand() < self.p", "flip_img = np.random.rand(2)[0] < self.p")],
    "data.RandomCrop.__call__": [("high=self.padding + 1", "high=self.padding"),
                                 ("pad + shift_x: pad + shift_x + H, pad + shift_y: pad + shift_y + W",
                                  "pad + shift_y: pad + shift_y + H, pad + shift_x: pad + shift_x + W"),
                                 ("low=-self.padding", "low=1 - self.padding"),
                                 ("size=2)", "size=2)[::-1]")],
    "data.DataLoader._split": [("len(indices), self.batch_size)", "len(indices) - 1, self.batch_size)"),
                               ("range(self.batch_size,", "range(self.batch_size - 1,"),
                               ("if len(indices) == 0: return []", "pass")],
    "data.DataLoader.__iter__": [("np.random.permutation(len(self.dataset))", "np.arange(len(self.dataset))"),
                                 ("self._split(np.random.permutation(len(self.dataset)))",
                                  "self._split(np.random.permutation(len(self.dataset))[::-1])"),
                                 ("elif self.sampler is not None:", "elif False:")],
    "data._LoaderIterator.__next__": [(">= len(self.ordering)", "> len(self.ordering)"),
                                      ("self.batch_idx += 1", "self.batch_idx += 2"),
                                      ("indices = self.ordering[self.batch_idx]", "indices = self.ordering[-1 - self.batch_idx]")],
})
MUTANTS.update({
    # 02a_conv_ops
    "ops_conv._im2col": [("st_h * s_h", "st_h"), ("(H - kernel_h) // s_h + 1", "(H - kernel_h) // s_h"),
                         ("st_h, st_w, st_c)", "st_w, st_h, st_c)"), ("(W - kernel_w) // s_w + 1", "(W - kernel_w) // s_h + 1")],
    "ops_conv._conv_forward_rows": [("rows @ xp.reshape", "rows[::-1] @ xp.reshape"),
                                    ("(s_h, s_w), (p_h, p_w))", "(s_w, s_h), (p_h, p_w))"),
                                    ("(p_h, p_w))", "(p_w, p_h))")],
    "ops_conv.Conv.gradient": [("(out_grad, b)", "(out_grad * 2, b)"), ("(a, out_grad)", "(a, -out_grad)"),
                               ("ConvInputGrad(s, p, a.shape, layout)", "ConvInputGrad(s, 0, a.shape, layout)"),
                               ("return grad_a, grad_b", "return grad_a, None")],
})
MUTANTS.update({
    # 04d_nn_sequence
    "nn.LSTMCell.forward": [("ops.tanh(g)", "ops.sigmoid(g)"), ("c = f * c0 + i * g", "c = i * c0 + f * g"),
                            ("o * ops.tanh(c)", "o * c"), ("(self.bias_ih + self.bias_hh)", "self.bias_ih"),
                            ("h0 @ self.W_hh", "c0 @ self.W_hh"), ("(bs, 4, H)", "(bs, H, 4)")],
    # 04e_nn_transformer
    "nn.MultiHeadAttention.forward": [("/ math.sqrt(D)", "/ D"), ("self.matmul(q, k)", "self.matmul(k, q)"),
                                      ("create_causal_mask(T_q, T_kv,", "create_causal_mask(T_kv, T_q,"),
                                      ("mask=mask)", "mask=None)"),
                                      ("probs @ v, probs", "probs @ v, self.matmul(q, k)")],
    "nn.AttentionLayer._heads": [("(B, T, self.num_head, self.dim_head)", "(B, T, self.dim_head, self.num_head)"),
                                 ("prenorm(x.reshape((B * T, F)))", "x.reshape((B * T, F))"),
                                 ("(1, 2))", "(0, 1))")],
    # 00a_ndarray
    "backend_ndarray.__getitem__": [("(stop - start + step - 1) // step", "(stop - start) // step"),
                                    ("strides.append(stride * step)", "strides.append(stride)"),
                                    ("offset += start * stride", "offset += start")],
    "backend_ndarray.broadcast_to": [("(0,) * lead", "(1,) * lead"), ("s if n == m else 0", "s if n == m else 1"),
                                     ("return self.as_strided(new_shape, strides)",
                                      "return self.as_strided(new_shape, strides).compact()")],
    "backend_ndarray.permute": [("self._strides[ax] for ax in axes", "self._strides[i] for i in range(self.ndim)"),
                                ("self._shape[ax] for ax in axes", "self._shape[ax] for ax in sorted(axes)")],
})
