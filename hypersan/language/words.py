"""Word data for grounding requests: thresholds, the background objects, and the roles of common words.

Pure data: nothing here imports from the package, so the vocabulary and the grounder can share it.
"""
from __future__ import annotations

# Thresholds calibrated for all-MiniLM-L6-v2 on tests/data/fmnist_requests.jsonl (see docs/RESULTS.md).
EMBED_ACCEPT = 0.60  # a part alone is grounded when its best phrase similarity reaches this
EMBED_NARROW = 0.50  # "modifier + phrase" may narrow the phrase to one of its classes above this
FUZZY_ACCEPT = 0.85  # difflib ratio for a misspelt vocabulary word ("snekers")
FUZZY_MIN_LEN = 5
BACKGROUND_DROP = 0.80  # background objects this similar to a vocabulary phrase are dropped (they may be synonyms)

# Open-set rejection: common objects (COCO's 80 and CIFAR-100's 100 categories, plus clothing accessories that
# clothing datasets often lack). A part nearer to one of these than to every vocabulary phrase is not understood.
# Entries the vocabulary names, or nearly names (>= BACKGROUND_DROP), are left out per vocabulary.
BACKGROUND = tuple(dict.fromkeys(x.strip() for x in """
person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, stop sign,
parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, umbrella, handbag,
tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, skateboard, surfboard,
tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange, broccoli, carrot,
hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv, laptop, mouse, remote,
keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, scissors, teddy bear,
hair drier, toothbrush,
aquarium fish, baby, beaver, bee, beetle, boy, bridge, butterfly, camel, can, castle, caterpillar, cattle,
chimpanzee, cloud, cockroach, crab, crocodile, dinosaur, dolphin, flatfish, forest, fox, girl, hamster, house,
kangaroo, lamp, lawn mower, leopard, lion, lizard, lobster, man, maple tree, mountain, mushroom, oak tree, orchid,
otter, palm tree, pear, pickup truck, pine tree, plain, plate, poppy, porcupine, possum, rabbit, raccoon, ray, road,
rocket, rose, sea, seal, shark, shrew, skunk, skyscraper, snail, snake, spider, squirrel, streetcar, sunflower,
sweet pepper, table, tank, telephone, television, tiger, tractor, trout, tulip, turtle, wardrobe, whale,
willow tree, wolf, woman, worm,
socks, gloves, belt, wallet, sunglasses, necklace, bracelet, earrings, watch
""".replace("\n", " ").split(",") if x.strip()))

SEPARATOR_TOKENS = {",", ";", "&", "+", "/", "|"}
CONNECTORS = {"and", "or", "vs", "v", "versus", "plus", "nor", "from", "against", "with", "as", "well", "along",
              "together", "compared", "opposed", "alongside", "then", "n"}
EXCLUDERS = {"except", "excluding", "exclude", "without", "minus", "not", "but", "no", "besides"}
ALL_WORDS = {"all", "everything", "every", "anything", "full", "complete"}
PREPOSITIONS_AFTER = {"for", "in", "made", "of", "on"}  # "sneakers for running": a modifier after the phrase
FILLER = set("""
a an the this that these those some any of for to in on at by into about than other such same
i me my we us our you your it its they them their he she his her one ones who whom which what
is are am be been being was were do does did will would could can should shall may might must
please pls kindly just only also too really very exactly solely purely exclusively mostly
need want like love wish require prefer id im ive youd lets let get got give make build create train
prune produce generate return output provide design set up show find spot see look looking help handle
model net network classifier classification detector recognizer recognition cnn neural subnet subnetwork
system pruned smaller small tiny fast compact light lightweight version variant
recognize recognise recognizes recognises recognizing recognising detect detects detecting detection
classify classifies classifying identify identifies identifying distinguish distinguishes distinguishing
differentiate differentiates differentiating discriminate separate separates separating sort sorts sorting
tell tells telling apart between among amongst both either neither each can able capable
image picture photo photograph pic item thing object stuff piece product kind type sort class category
categorie group whole entire set list only just e g eg ie etc okay ok hi hello hey thanks thank
containing contain contains with same nothing else more something
""".split())
