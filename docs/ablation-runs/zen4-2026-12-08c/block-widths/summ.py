import json, statistics as st, sys
for f in sys.argv[1:]:
    r = json.load(open(f)); s = r["subtasks"]
    pairs = [x for x in s if len(x["classes"]) == 2]; tr = [x for x in s if len(x["classes"]) == 3]
    m = lambda L, k: st.mean(x[k] for x in L)
    print(f"{f:32s} dense {r['dense']['acc']:.4f} | pairs acc {m(pairs,'acc'):.4f} (dense {m(pairs,'dense_acc'):.4f}) mac {m(pairs,'mac_ratio'):.3f} | triples {m(tr,'acc'):.4f} ({m(tr,'dense_acc'):.4f}) mac {m(tr,'mac_ratio'):.3f}")
