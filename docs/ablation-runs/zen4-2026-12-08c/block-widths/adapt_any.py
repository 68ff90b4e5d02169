"""adapt FACTORY FOLDER OUT KEEP_MULTIPLE GAMMA SEED [KWARGS_JSON]"""
import json, sys, time
sys.path.insert(0, "/tmp/s19/km"); sys.path.insert(0, "/work/main")
import hypersan
factory, folder, out, km, g, seed = sys.argv[1:7]
kwargs = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None
t = time.time()
hypersan.adapt(factory, folder, out, kwargs=kwargs, log=lambda m: None,
               overrides=["train.progress=false", f"generator.keep_multiple={km}", f"loss.gamma={g}", f"train.seed={seed}"])
print("seconds", round(time.time() - t, 1))
