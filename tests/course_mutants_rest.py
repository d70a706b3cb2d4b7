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
                          ("_join(prefix, name)", "name"),                                      # no dotted path
                          ("yield prefix, module", "pass")],
    "nn.train": [("bool(mode)", "True"), ('_named_modules(self, "", set())', '[("", self)]'),
                 ("return self", "return None")],
    "nn._state_items": [('name not in d["_non_persistent_buffers"]', "True"),
                        ('prefix + name + "."', "prefix + name"),
                        ('_own(module, "_buffers", Buffer)', "[]")],
    "nn.load_state_dict": [("k not in state_dict]", "k in state_dict]"),
                           ("unexpected = [k for k in state_dict if k not in own]", "unexpected = []")],
    "nn.load_state_dict#2": [("tensor.cached_data = array", "tensor.cached_data = tensor.cached_data"),
                             ("in updates:", "in updates[1:]:")],
})
