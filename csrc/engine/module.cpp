// `import threethings_fast._C` loads this library, whose static initialisers register the ttf:: engine ops
// (ops.cpp). The module itself is empty: the ops are reached through torch.ops.ttf.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "threethings_fast engine ops (torch.ops.ttf)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
