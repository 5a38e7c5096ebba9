"""The bundled training corpus: simple children's stories made by this module, and their tokenizer.

Why: anekit must train out of the box on any machine without downloading anything, and every word
of the shipped text must be the project's own. So the stories are generated here, from templates
and word lists written for anekit, with a seeded RNG: the same seed gives the same bytes.

Each story follows a small arc (a setting, an event, a resolution) chosen from eight plots (a lost
thing, a new friend, something out of reach, a storm, a quarrel over a toy, a fear, an animal in
trouble, a gift) with several phrasings per sentence. The text is simple enough that a 1.7 M
parameter model learns it well (loss far below ln(vocab)), varied enough that it keeps learning for
a few hundred steps.

Shipped files (package data, ``anekit/data/``):

- ``stories.txt``: the stories, one paragraph each, separated by one blank line (``"\\n\\n"``);
  3,600 stories, 1.75 MB, 712,940 tokens with the bundled tokenizer (3,600 of them BOS).
- ``tokenizer.json``: a byte-level BPE (Hugging Face ``tokenizers``) with exactly 512 ids, the
  vocab of the ``tiny`` preset. Special tokens mirror llama2.c (ane-private-api.md §5.1, BOS=1,
  EOS=2): id 0 ``<unk>`` (never produced: the byte alphabet covers any text), 1 ``<s>`` (BOS),
  2 ``</s>`` (EOS); ids 3..258 are the 256 bytes, the rest are merges learned on ``stories.txt``.

Regenerate both (takes a few seconds)::

    python -m anekit.train.corpus --out src/anekit/data

``tests/data/test_corpus_bundled.py`` checks that this reproduces the shipped files.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .tokenizers import BPE_SPECIAL_TOKENS

DEFAULT_SEED = 20240501
DEFAULT_STORIES = 3600
VOCAB_SIZE = 512
SPECIAL_TOKENS = BPE_SPECIAL_TOKENS  # ids 0, 1, 2: llama2.c's unk/BOS/EOS (§5.1)
BOS_ID, EOS_ID = 1, 2
STORY_SEPARATOR = "\n\n"

# ---------------------------------------------------------------------------------------------
# Word lists. A hero is (name, pronoun, kind); kind "" means a child.
# fmt: off

GIRLS = """Lily Mia Sara Anna Lucy Emma Zoe Ella Ruby Ivy Rosa Nora Maya Lena Tina Amy Kate Jill
Molly Daisy Hana Sofia Clara Greta Wendy""".split()
BOYS = """Tom Ben Max Sam Jack Leo Finn Noah Theo Owen Kai Eli Tim Bob Joe Dan Ned Hugo Omar
Ravi Pablo Felix Oscar Billy Milo""".split()
ANIMALS = [
    ("bunny", "Pip", "she"), ("dog", "Rex", "he"), ("bird", "Tweet", "she"), ("cat", "Mittens", "she"),
    ("turtle", "Shelly", "she"), ("fox", "Rusty", "he"), ("mouse", "Nibbles", "he"), ("bear", "Bruno", "he"),
    ("duck", "Quack", "he"), ("frog", "Hopper", "he"), ("owl", "Hoot", "he"), ("pig", "Penny", "she"),
    ("lion", "Sunny", "he"), ("squirrel", "Nutty", "he"), ("puppy", "Spot", "he"), ("kitten", "Fluff", "she"),
    ("lamb", "Woolly", "she"), ("horse", "Star", "she"), ("cow", "Bella", "she"), ("goat", "Billy", "he"),
    ("hen", "Henny", "she"), ("bee", "Buzz", "he"), ("monkey", "Coco", "he"), ("elephant", "Ellie", "she"),
]
TRAITS = """kind curious brave shy happy silly gentle clever playful quiet little cheerful busy""".split()
# grown-ups and older siblings, with their pronoun
ELDERS = {
    "mom": "she", "dad": "he", "grandma": "she", "grandpa": "he", "big sister": "she", "big brother": "he",
    "aunt": "she", "uncle": "he",
}

# place -> (phrase after a preposition, preposition, things one sees there)
PLACES = {
    "park": ("the park", "in", ["a big slide", "tall trees", "green grass", "a little bench"]),
    "garden": ("the garden", "in", ["red roses", "a small pond", "tall sunflowers", "a stone path"]),
    "forest": ("the forest", "in", ["old trees", "soft moss", "a quiet path", "pine cones"]),
    "beach": ("the beach", "at", ["soft sand", "blue waves", "pretty shells", "a big rock"]),
    "farm": ("the farm", "on", ["a red barn", "a tall haystack", "a muddy field", "a wooden fence"]),
    "school": ("school", "at", ["a big yard", "bright windows", "a reading corner", "a swing"]),
    "meadow": ("the meadow", "in", ["yellow flowers", "long grass", "busy bees", "a small hill"]),
    "pond": ("the pond", "by", ["green lily pads", "little fish", "tall reeds", "a wooden dock"]),
    "hill": ("the hill", "on", ["a windy top", "a lonely tree", "big white clouds", "a steep path"]),
    "library": ("the library", "at", ["many books", "soft chairs", "a big map", "a quiet table"]),
    "zoo": ("the zoo", "at", ["a tall giraffe", "a sleepy lion", "noisy monkeys", "a big gate"]),
    "kitchen": ("the kitchen", "in", ["a warm oven", "a big table", "a jar of cookies", "a blue cup"]),
    "backyard": ("the backyard", "in", ["a tree house", "a sandbox", "a swing", "a tiny shed"]),
    "river": ("the river", "by", ["cold water", "smooth stones", "a little bridge", "jumping fish"]),
    "village": ("the village", "in", ["small houses", "a busy market", "an old well", "a bakery"]),
    "playground": ("the playground", "at", ["a merry-go-round", "a sandbox", "a climbing frame", "swings"]),
}

COLORS = "red blue green yellow pink purple orange white brown shiny".split()
# object -> (kinds of color allowed, verb for playing with it)
OBJECTS = {
    "ball": (True, "kick"), "kite": (True, "fly"), "toy car": (True, "push"), "teddy bear": (False, "hug"),
    "hat": (True, "wear"), "box": (True, "open"), "stone": (True, "hold"), "book": (True, "read"),
    "balloon": (True, "hold"), "drum": (True, "play"), "shell": (True, "hold"), "boat": (True, "sail"),
    "doll": (False, "hug"), "crayon": (True, "use"), "blanket": (True, "wrap up in"), "key": (True, "keep"),
    "bell": (True, "ring"), "feather": (True, "wave"), "puzzle": (False, "solve"), "cup": (True, "fill"),
    "scarf": (True, "wear"), "bucket": (True, "fill"), "whistle": (True, "blow"), "truck": (True, "push"),
    "robot": (False, "play with"), "ribbon": (True, "tie"), "flute": (False, "play"),
    "marble": (True, "roll"),
}
HIDING_SPOTS = [
    "under a bush", "behind a big tree", "under the bed", "next to a rock", "in the tall grass",
    "under a pile of leaves", "behind the door", "inside an old box", "near the fence", "under a chair",
]
GAMES = ["hide and seek", "tag", "catch", "a game of pretend", "jump rope", "follow the leader"]
FEARS = {
    "the dark": ("turned on a small light", "the dark room was just the same room as before"),
    "the water": ("held hands and stepped in slowly", "the water was cool and fun"),
    "the big slide": ("climbed up one step at a time", "the slide was fast and fun"),
    "thunder": ("counted the seconds after each flash", "the storm was far away"),
    "the tall tree": ("climbed up slowly and held on tight", "the view from the top was beautiful"),
    "the new school": ("said hello to a girl at the door", "the children there were very nice"),
    "the big dog next door": ("held out a hand to say hello", "the dog only wanted to play"),
}
TROUBLES = [
    ("a little bird", "stuck in a tree", "lifted it down gently"),
    ("a small kitten", "stuck in a box", "tipped the box over softly"),
    ("a tiny frog", "stuck in a bucket", "tipped the bucket over"),
    ("a baby duck", "lost near the road", "walked it back to its mother"),
    ("a little snail", "in the middle of the path", "moved it onto a leaf"),
    ("a young deer", "caught in a fence", "held the wire up"),
    ("a small puppy", "stuck in the mud", "pulled it out carefully"),
]
MAKES = [
    ("a cake", "baked", "with sugar and eggs"), ("a picture", "drew", "with bright crayons"),
    ("a card", "made", "with paper and glue"), ("a necklace", "made", "with little beads"),
    ("a sandcastle", "built", "with a bucket and a spade"), ("a song", "wrote", "with happy words"),
    ("a paper boat", "folded", "with blue paper"), ("a cookie", "baked", "with chocolate chips"),
]
FOODS = ["an apple", "a cookie", "some bread", "a banana", "a sandwich", "some grapes", "a cupcake", "a pear"]
WEATHER = ["sunny", "windy", "warm", "cold", "bright", "cloudy", "snowy"]
TIMES = ["One day", "One morning", "One sunny day", "One afternoon", "Early one morning", "Later that day"]
# fmt: on


def _an(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


@dataclass(frozen=True)
class Hero:
    name: str
    he: str  # "he" or "she"
    kind: str  # "" for a child, else the animal

    @property
    def him(self) -> str:
        return "him" if self.he == "he" else "her"

    @property
    def his(self) -> str:
        return "his" if self.he == "he" else "her"


class _StoryWriter:
    """Writes one story at a time; all randomness comes from the one `random.Random` given.

    `random.Random(seed)` with `choice`/`random` is specified to give the same stream on every
    Python version since 3.2, which is what makes the shipped file reproducible.
    """

    def __init__(self, rng: random.Random):
        self.r = rng

    def pick(self, seq):
        return self.r.choice(list(seq))

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def hero(self, avoid: str = "") -> Hero:
        while True:
            roll = self.r.random()
            if roll < 0.35:
                h = Hero(self.pick(GIRLS), "she", "")
            elif roll < 0.7:
                h = Hero(self.pick(BOYS), "he", "")
            else:
                kind, name, he = self.pick(ANIMALS)
                h = Hero(name, he, kind)
            if h.name != avoid:
                return h

    def intro(self, h: Hero) -> str:
        """The introduction of a new character: 'a little girl named Lily'."""
        trait = self.pick(TRAITS)
        if h.kind:
            noun = h.kind
        else:
            noun = self.pick(["girl", "child"] if h.he == "she" else ["boy", "child"])
        return f"{_an(trait + ' ' + noun)} named {h.name}"

    def thing(self) -> tuple[str, str]:
        name = self.pick(OBJECTS)
        colored, verb = OBJECTS[name]
        if colored and self.chance(0.7):
            name = f"{self.pick(COLORS)} {name}"
        return name, verb

    # -- story parts ---------------------------------------------------------------------------

    def setting(self, h: Hero, place: str) -> list[str]:
        where, prep, sights = PLACES[place]
        a = self.intro(h)
        opening = self.pick(
            [
                f"Once upon a time, there was {a}.",
                f"Once upon a time, {prep} {where}, there lived {a}.",
                f"There was once {a} who loved to play {prep} {where}.",
                f"Once there was {a}.",
            ]
        )
        sent = [opening]
        if self.chance(0.6):
            sent.append(
                self.pick(
                    [
                        f"{_cap(h.he)} liked to play {prep} {where} every day.",
                        "{} {}, {} could see {} and {}.".format(
                            prep.capitalize(), where, h.he, *self.r.sample(sights, 2)
                        ),
                        f"{h.name} loved {where} because it had {self.pick(sights)}.",
                        f"Every day, {h.name} went to {where} with {h.his} {self.pick(ELDERS)}.",
                    ]
                )
            )
        if self.chance(0.4):
            sent.append(f"It was a {self.pick(WEATHER)} day.")
        return sent

    def lost_thing(self, h: Hero, place: str) -> list[str]:
        where, prep, _ = PLACES[place]
        obj, verb = self.thing()
        f = self.hero(avoid=h.name)
        spot = self.pick(HIDING_SPOTS)
        return [
            f"{h.name} had {_an(obj)}. {_cap(h.he)} liked to {verb} it every day.",
            self.pick(
                [
                    f"{self.pick(TIMES)}, {h.name} could not find the {obj}.",
                    f"{self.pick(TIMES)}, the {obj} was gone!",
                    f"{self.pick(TIMES)}, {h.name} lost the {obj} {prep} {where}.",
                ]
            ),
            f"{h.name} was very sad. {_cap(h.he)} looked everywhere, but {h.he} could not find it.",
            self.pick(
                [
                    f'Then {self.intro(f)} came by. "Why are you sad?" asked {f.name}.',
                    f'Then {h.his} friend {f.name} saw {h.him}. "What is wrong?" {f.he} asked.',
                ]
            ),
            f'"I lost my {obj}," said {h.name}. "I will help you look," said {f.name}.',
            f"They looked {self.pick(['high and low', 'all around', 'here and there'])}. "
            f"At last, {f.name} found the {obj} {spot}!",
            self.pick(
                [
                    f'{h.name} was so happy. "Thank you, {f.name}!" {h.he} said.',
                    f'{h.name} gave {f.name} a big hug. "You are a good friend," {h.he} said.',
                ]
            ),
            self.pick(
                [
                    f"From that day on, {h.name} kept the {obj} in a safe place.",
                    f"Then they played with the {obj} together until it was time to go home.",
                    f"{h.name} learned that friends help each other.",
                ]
            ),
        ]

    def new_friend(self, h: Hero, place: str) -> list[str]:
        where, prep, sights = PLACES[place]
        f = self.hero(avoid=h.name)
        game = self.pick(GAMES)
        return [
            self.pick(
                [
                    f"{h.name} did not have any friends {prep} {where}. {_cap(h.he)} felt lonely.",
                    f"{h.name} was new {prep} {where} and felt a little shy.",
                    f"{self.pick(TIMES)}, {h.name} sat alone near {self.pick(sights)}.",
                ]
            ),
            f"Then {h.he} saw {self.intro(f)}. {f.name} was playing all alone too.",
            self.pick(
                [
                    f'{h.name} walked over and said, "Hello! Do you want to play with me?"',
                    f'"Hi, I am {h.name}," {h.he} said. "Can I play with you?"',
                ]
            ),
            f'{f.name} smiled and said, "Yes! Let\'s play {game}!"',
            self.pick(
                [
                    f"They played {game} all afternoon. They laughed and ran in the sun.",
                    f"They played {game} until the sun went down.",
                    f"They had so much fun playing {game} together.",
                ]
            ),
            self.pick(
                [
                    f"From that day on, {h.name} and {f.name} were best friends.",
                    f"{h.name} was not lonely anymore. {_cap(h.he)} had a new friend.",
                    f"Every day after that, they met {prep} {where} to play.",
                ]
            ),
        ]

    def out_of_reach(self, h: Hero, place: str) -> list[str]:
        obj, verb = self.thing()
        up = self.pick(["high up in a tree", "on a tall shelf", "on top of the fence", "on the roof"])
        if self.chance(0.5):
            elder = self.pick(ELDERS)
            who, who_he = f"{h.his} {elder}", ELDERS[elder]
        else:
            f = self.hero(avoid=h.name)
            who, who_he = f.name, f.he
        return [
            f"{self.pick(TIMES)}, {h.name} saw {_an(obj)} {up}.",
            f"{_cap(h.he)} wanted to {verb} it very much.",
            self.pick(
                [
                    f"{h.name} jumped and jumped, but {h.he} could not reach it.",
                    f"{h.name} tried to climb up, but it was too high.",
                    f"{_cap(h.he)} stood on {h.his} toes and stretched, but it was too far.",
                ]
            ),
            f"{h.name} felt sad. Then {h.he} had an idea. {_cap(h.he)} asked {who} for help.",
            self.pick(
                [
                    f"{_cap(who)} was tall, so {who_he} reached up and got the {obj}.",
                    f"{_cap(who)} found a long stick, and {who_he} got the {obj} down.",
                    f"Together they got a ladder and took the {obj} down.",
                ]
            ),
            self.pick(
                [
                    f'{h.name} was so happy. {_cap(h.he)} said, "Thank you!" and began to {verb} the {obj}.',
                    f'"Thank you for helping me," said {h.name}. '
                    f"{_cap(h.he)} shared the {obj} with everyone.",
                ]
            ),
            self.pick(
                [
                    f"{h.name} learned that it is good to ask for help.",
                    "It was the best day ever.",
                    "They all smiled and played until dinner time.",
                ]
            ),
        ]

    def storm(self, h: Hero, place: str) -> list[str]:
        where, prep, _ = PLACES[place]
        f = self.hero(avoid=h.name)
        shelter = self.pick(["a big tree", "a little shed", "an old bridge", "a wide umbrella", "the porch"])
        return [
            f"{self.pick(TIMES)}, {h.name} and {h.his} friend {f.name} were playing {prep} {where}.",
            self.pick(
                [
                    "Suddenly, dark clouds came and it began to rain.",
                    "Then the wind blew hard and big drops of rain began to fall.",
                    "All of a sudden, there was a loud boom of thunder.",
                ]
            ),
            f'"Oh no!" said {f.name}. "We will get wet!"',
            f'{h.name} saw {shelter}. "Quick, come with me!" {h.he} said.',
            f"They ran under {shelter} and waited. They told stories while the rain fell.",
            self.pick(
                [
                    "Soon the rain stopped and the sun came out. There was a big rainbow in the sky!",
                    "After a while the clouds went away. The air smelled fresh and clean.",
                ]
            ),
            self.pick(
                [
                    f"{h.name} and {f.name} jumped in the puddles and laughed.",
                    "They went home happy, with wet shoes and big smiles.",
                    f'{f.name} said, "You are a good friend, {h.name}."',
                ]
            ),
        ]

    def quarrel(self, h: Hero, place: str) -> list[str]:
        obj, verb = self.thing()
        f = self.hero(avoid=h.name)
        elder = self.pick(ELDERS)
        return [
            f"{h.name} and {f.name} were playing with {_an(obj)}.",
            f"{h.name} wanted to {verb} the {obj}, but {f.name} wanted to {verb} it too.",
            self.pick(
                [
                    f'"It is mine!" said {h.name}. "No, it is mine!" said {f.name}.',
                    f'They both pulled on the {obj}. "Let go!" they shouted.',
                ]
            ),
            self.pick(
                [
                    f"{f.name} began to cry. {h.name} felt bad.",
                    f"The {obj} fell on the ground and they both felt sad.",
                ]
            ),
            f'{_cap(h.his)} {elder} came and said, "You can take turns. Sharing makes playing more fun."',
            f"So {h.name} let {f.name} {verb} the {obj} first. Then it was {h.name}'s turn.",
            self.pick(
                [
                    "They played together and had a lot of fun.",
                    f"{h.name} learned that sharing is better than fighting.",
                    f"From then on, {h.name} and {f.name} always took turns.",
                ]
            ),
        ]

    def fear(self, h: Hero, place: str) -> list[str]:
        thing = self.pick(FEARS)
        how, truth = FEARS[thing]
        elder = self.pick(ELDERS)
        return [
            f"{h.name} was scared of {thing}.",
            self.pick(
                [
                    f'{self.pick(TIMES)}, {h.his} {elder} said, "Let\'s be brave together."',
                    f'{_cap(h.he)} told {h.his} {elder}, "I am scared of {thing}."',
                ]
            ),
            f'{_cap(h.his)} {elder} smiled and said, "It is okay to be scared. I will be right here."',
            f"So {h.name} took a deep breath and {how}.",
            f"Soon {h.name} saw that {truth}.",
            self.pick(
                [
                    f"{h.name} was not scared anymore. {_cap(h.he)} felt brave and proud.",
                    f'"I did it!" said {h.name}. {_cap(h.his)} {elder} gave {h.him} a big hug.',
                ]
            ),
            self.pick(
                [
                    f"{h.name} learned that being brave can be fun.",
                    "It was a very good day.",
                    f"The next day, {h.name} wanted to do it again.",
                ]
            ),
        ]

    def animal_in_trouble(self, h: Hero, place: str) -> list[str]:
        where, prep, _ = PLACES[place]
        animal, trouble, fix = self.pick(TROUBLES)
        food = self.pick(FOODS)
        e = self.pick(ELDERS)
        return [
            f"{self.pick(TIMES)}, {h.name} was walking {prep} {where}.",
            f"{_cap(h.he)} heard a small sound. It was {animal} {trouble}!",
            self.pick(
                [
                    f'"Don\'t worry, I will help you," said {h.name}.',
                    f'{h.name} wanted to help. "Poor thing," {h.he} said.',
                ]
            ),
            f"{h.name} {fix}. Then {h.he} gave it {food}.",
            self.pick(
                [
                    f"The animal looked at {h.name} and was happy. It seemed to say thank you.",
                    "Soon the animal felt better and went back to its home.",
                ]
            ),
            self.pick(
                [
                    f"{h.name} felt warm inside. Helping others made {h.him} happy.",
                    f'When {h.he} told {h.his} {e}, {ELDERS[e]} said, "You were very kind today."',
                    f"After that, the animal came to visit {h.name} every day.",
                ]
            ),
        ]

    def gift(self, h: Hero, place: str) -> list[str]:
        thing, verb, how = self.pick(MAKES)
        elder = self.pick(ELDERS)
        reason = self.pick(["a birthday", "a sick day", "a special day", "a long day at work"])
        return [
            f"{self.pick(TIMES)}, {h.name}'s {elder} had {reason}.",
            f"{h.name} wanted to make {h.his} {elder} happy. {_cap(h.he)} had an idea.",
            f"{_cap(h.he)} {verb} {thing} {how}.",
            self.pick(
                [
                    "It was not easy. It took a long time, but " + h.he + " did not give up.",
                    "It was a little messy, but it was made with love.",
                    "It was the best thing " + h.he + " had ever made.",
                ]
            ),
            f"{h.name} gave {thing} to {h.his} {elder}.",
            f"{_cap(h.his)} {elder} smiled a big smile. "
            f'"Thank you, {h.name}! I love it," {ELDERS[elder]} said.',
            self.pick(
                [
                    f"{h.name} felt proud and happy.",
                    "They hugged and the whole day felt bright.",
                    f"{h.name} learned that the best gifts come from the heart.",
                ]
            ),
        ]

    PLOTS = (
        "lost_thing",
        "new_friend",
        "out_of_reach",
        "storm",
        "quarrel",
        "fear",
        "animal_in_trouble",
        "gift",
    )

    def story(self) -> str:
        h = self.hero()
        place = self.pick(PLACES)
        plot = getattr(self, self.pick(self.PLOTS))
        sentences = self.setting(h, place) + plot(h, place)
        if self.chance(0.2):
            sentences.append("The end.")
        return " ".join(sentences)


def generate_stories(n: int = DEFAULT_STORIES, seed: int = DEFAULT_SEED) -> list[str]:
    """`n` stories from `seed`; the same arguments always give the same list."""
    writer = _StoryWriter(random.Random(seed))
    return [writer.story() for _ in range(n)]


def corpus_text(n: int = DEFAULT_STORIES, seed: int = DEFAULT_SEED) -> str:
    """The text of ``stories.txt``: stories separated by a blank line, ending in a newline."""
    return STORY_SEPARATOR.join(generate_stories(n, seed)) + "\n"


def train_tokenizer(text: str, vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE with exactly `vocab_size` ids (specials 0..2, bytes, then merges), configured
    as every BPE anekit trains (`anekit.train.tokenizers.new_bpe`), learned story by story.

    Returns a `tokenizers.Tokenizer`. Training is single-threaded-deterministic: the same text gives
    the same merges (pinned by the reproduction test).
    """
    from .tokenizers import new_bpe

    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator(text.split(STORY_SEPARATOR), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"tokenizer training gave {tok.get_vocab_size()} ids, wanted {vocab_size}: the text has too few "
            "distinct pairs; generate more stories"
        )
    return tok


def data_path(name: str) -> Path:
    """Path of a shipped data file (``stories.txt``, ``tokenizer.json``) inside the package."""
    return Path(str(resources.files("anekit") / "data" / name))


def write_corpus(out: str | Path, n: int = DEFAULT_STORIES, seed: int = DEFAULT_SEED) -> dict:
    """Write ``stories.txt`` and ``tokenizer.json`` into directory `out`; returns a few stats."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = corpus_text(n, seed)
    (out / "stories.txt").write_bytes(text.encode("utf-8"))
    tok = train_tokenizer(text)
    tok.save(str(out / "tokenizer.json"))
    return {
        "stories": n,
        "bytes": len(text.encode("utf-8")),
        "vocab_size": tok.get_vocab_size(),
        "stories_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m anekit.train.corpus", description="Regenerate the bundled story corpus and tokenizer."
    )
    ap.add_argument("--out", required=True, help="directory to write stories.txt and tokenizer.json into")
    ap.add_argument("--stories", type=int, default=DEFAULT_STORIES, help="number of stories")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="RNG seed")
    args = ap.parse_args(argv)
    stats = write_corpus(args.out, args.stories, args.seed)
    for k, v in stats.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
