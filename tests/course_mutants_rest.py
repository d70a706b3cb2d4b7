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
