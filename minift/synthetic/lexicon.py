"""The story world's words: the word lists and fact tables (what each animal says, where
each food comes from, what is found in each place), and the small bits of morphology the
grammar needs (plural, conjugate, word_list). minift/synthetic/world.py builds sentences from them,
and re-exports them, so `world.NAMES` and `world.plural` work as before."""

# ------------------------------------------------------------------------------------------
# Word lists. Compact strings split into lists; the tables carry facts the describers use.

GIRLS = "Lily Mia Sue Anna Emma Lucy Sara Amy Kim Zoe Ella Rose Jane Lola Nina Ruby Daisy Molly Ivy Grace".split()
BOYS = "Tom Ben Max Sam Leo Jack Tim Joe Bob Finn Jake Luke Noah Dan Ted Ned Alex Eli Owen Pete".split()
NAMES = GIRLS + BOYS
PRONOUN = {**{n: "she" for n in GIRLS}, **{n: "he" for n in BOYS}}
_FORMS = {"he": ("he", "him", "his"), "she": ("she", "her", "her")}
ADULTS = {"mom": "she", "dad": "he", "grandma": "she", "grandpa": "he"}
HERO_ANIMALS = "cat dog bunny fox bear mouse duck frog owl pig puppy kitten squirrel lion monkey".split()

# animal | size | sound (- for none) | what it has | how it moves | where it lives | what it likes
_ANIMAL_TABLE = """cat small meow soft_fur run in_a_house fish
dog big woof soft_fur run in_a_house bones
puppy small woof soft_fur run in_a_house bones
kitten small meow soft_fur run in_a_house milk
bunny small - soft_fur hop in_a_hole carrots
rabbit small - long_ears hop in_a_hole carrots
bird small tweet soft_feathers fly in_a_nest seeds
fox small - red_fur run in_the_forest mice
bear big growl thick_fur climb in_the_forest honey
duck small quack soft_feathers swim on_a_pond bread
frog small ribbit smooth_green_skin jump near_a_pond bugs
fish small - shiny_scales swim in_the_water worms
mouse tiny squeak a_long_tail run in_a_hole cheese
horse big neigh a_long_tail run on_a_farm apples
cow big moo black_and_white_spots walk on_a_farm grass
pig big oink pink_skin run on_a_farm corn
sheep small baa thick_wool walk on_a_farm grass
goat small baa a_long_beard climb on_a_farm grass
hen small cluck soft_feathers walk on_a_farm seeds
owl small hoot big_eyes fly in_a_tree mice
turtle small - a_hard_shell swim near_the_water leaves
snail tiny - a_hard_shell crawl in_the_garden leaves
lion big roar a_big_mane run at_the_zoo meat
tiger big roar orange_and_black_stripes run in_the_jungle meat
monkey small - a_long_tail climb in_the_trees bananas
elephant huge - a_long_trunk walk at_the_zoo leaves
giraffe tall - a_long_neck walk at_the_zoo leaves
zebra big - black_and_white_stripes run at_the_zoo grass
whale huge - smooth_skin swim in_the_sea fish
bee tiny buzz small_wings fly in_a_hive flowers
butterfly small - pretty_wings fly in_the_garden flowers
squirrel small - a_fluffy_tail climb in_a_tree nuts
ant tiny - six_legs crawl under_the_ground crumbs
crab small - a_hard_shell crawl on_the_beach fish
deer big - brown_fur run in_the_forest grass
spider tiny - eight_legs crawl in_a_web bugs"""
ANIMAL_INFO = {row[0]: dict(zip("size sound has move home likes".split(), (w.replace("_", " ") for w in row[1:])))
               for row in (line.split() for line in _ANIMAL_TABLE.splitlines())}
ANIMALS = list(ANIMAL_INFO)

# object:verb -- how you play with it ("fly the kite"); no verb means "play with the ..."
_OBJECT_TABLE = """ball:kick kite:fly doll book:read drum:play bike:ride boat:sail car train truck robot balloon
hat:wear bell:ring whistle:blow crayon:draw_with puzzle block box:open bag:carry cup:fill key:hold necklace:wear
ring:wear scarf:wear umbrella:open lamp:turn_on clock:look_at map:read rope:jump_with wagon:pull sled:ride
basket:carry bucket:fill shovel:dig_with blanket:fold pillow:hug piano:play guitar:play flute:play top:spin
camera:use""".split()
OBJECT_VERB = {o: (v.replace("_", " ") if v else "play with") for o, _, v in (x.partition(":") for x in _OBJECT_TABLE)}
OBJECTS = list(OBJECT_VERB)

# food | colour | tastes | where it comes from
_FOOD_TABLE = """apple red sweet,crunchy grows_on_a_tree
banana yellow sweet,soft grows_on_a_tree
pear green sweet,juicy grows_on_a_tree
peach orange sweet,juicy grows_on_a_tree
cherry red sweet,juicy grows_on_a_tree
plum purple sweet,juicy grows_on_a_tree
lemon yellow sour,juicy grows_on_a_tree
grape purple sweet,juicy grows_on_a_vine
strawberry red sweet,juicy grows_in_a_garden
carrot orange crunchy,sweet grows_in_the_ground
potato brown soft,warm grows_in_the_ground
tomato red juicy,soft grows_in_a_garden
cake white sweet,soft is_baked_in_an_oven
cookie brown sweet,crunchy is_baked_in_an_oven
pie brown sweet,warm is_baked_in_an_oven
muffin brown sweet,soft is_baked_in_an_oven
cupcake pink sweet,soft is_baked_in_an_oven
pizza red hot,cheesy is_baked_in_an_oven
pancake golden sweet,warm is_made_in_a_pan
sandwich brown yummy,soft is_made_with_bread
egg white soft,warm comes_from_a_hen"""
FOOD_INFO = {f: {"color": c, "tastes": t.split(","), "origin": o.replace("_", " ")}
             for f, c, t, o in (line.split() for line in _FOOD_TABLE.splitlines())}
FOODS = list(FOOD_INFO)

# place | preposition | adjectives | things you find there (>= 6 each)
_PLACE_TABLE = """park in big,green,sunny tree bench swing slide pond flower path duck
garden in green,pretty,quiet flower bush tree bee worm rock butterfly pot
forest in dark,quiet,big tree bush log rock mushroom owl fox path
beach at sunny,warm,windy shell rock wave crab towel umbrella bucket boat
school at big,busy,warm desk chair book board crayon teacher clock
house in small,warm,cozy bed chair table lamp window door rug clock
farm on big,busy,green cow pig hen horse barn tractor sheep fence
zoo at big,busy,noisy lion monkey elephant giraffe bear zebra tiger
kitchen in warm,clean,small table pot cup plate spoon oven bowl
lake by big,blue,calm fish duck boat frog rock tree
river by long,cold,fast fish rock bridge boat frog duck
town in busy,small,old shop car bus house tree bike road
shop at small,busy,bright toy hat box shelf cake ball
library at quiet,big,old book shelf chair table desk map lamp
hill on big,green,windy tree rock flower path sheep kite
field in big,green,sunny flower bee butterfly rabbit tree horse
playground at busy,fun,sunny swing slide sandbox ball bench seesaw
bakery at warm,busy,small cake cookie pie muffin oven table
pond by small,quiet,green duck frog fish rock bug leaf
castle in big,old,tall tower door window king queen flag
sea by big,blue,deep fish boat wave shell whale crab
cave in dark,cold,quiet rock spider stone puddle hole lamp
yard in green,big,sunny tree swing dog ball fence flower"""
_PLACE_ROWS = [line.split() for line in _PLACE_TABLE.splitlines()]
PLACES = [r[0] for r in _PLACE_ROWS]
PLACE_PREP = {r[0]: r[1] for r in _PLACE_ROWS}
PLACE_ADJ = {r[0]: r[2].split(",") for r in _PLACE_ROWS}
PLACE_THINGS = {r[0]: r[3:] for r in _PLACE_ROWS}

COLORS = "red blue green yellow orange purple pink brown black white gray".split()
SIZES = "big small little tiny huge".split()
LOOKS = "shiny new old pretty bright clean funny special".split()  # what an object looks like
FEELS = "soft hard smooth light heavy warm".split()  # what it feels like
HERO_ADJ = "little small young kind happy brave curious shy".split()
GOOD = "happy glad excited proud calm thankful".split()
BAD = "sad angry scared upset worried lonely tired grumpy".split()
EMOTIONS = GOOD + BAD
ADJECTIVES = sorted(set(SIZES + LOOKS + FEELS + HERO_ADJ + EMOTIONS + sum(PLACE_ADJ.values(), [])))
WEATHER = "sunny rainy windy cold warm hot cloudy snowy".split()
TIMES = "morning afternoon evening day".split()
SEASONS = "spring summer fall winter".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
NUMBERS = "two three four five six".split()
CLOTHES = "coat hat scarf boots jacket sweater".split()
MEALS = ["breakfast", "lunch", "dinner", "a snack"]

# Things to do; each starts with a verb in _VERBS so it can be put in the past or -ing form.
ACTIVITIES = """play tag|play hide and seek|play a game|sing a song|draw a picture|paint a picture|read a book
build a tower|ride a bike|fly a kite|jump rope|dance|run around|look at the clouds|pick flowers|climb a tree
watch the birds|feed the ducks|blow bubbles|bake cookies|play ball|have a picnic|make a card|tell stories
dig a hole|plant seeds|chase butterflies|skip|collect rocks|roll down the hill|build a sand castle""".replace("\n", "|").split("|")
# base/past/-ing forms of every verb that starts an activity or a play phrase
_VERBS = {b: (p, g) for b, p, g in (t.split("/") for t in """
play/played/playing sing/sang/singing draw/drew/drawing paint/painted/painting read/read/reading
build/built/building ride/rode/riding fly/flew/flying jump/jumped/jumping dance/danced/dancing
run/ran/running look/looked/looking pick/picked/picking climb/climbed/climbing watch/watched/watching
feed/fed/feeding blow/blew/blowing bake/baked/baking have/had/having make/made/making tell/told/telling
dig/dug/digging plant/planted/planting chase/chased/chasing skip/skipped/skipping hop/hopped/hopping
collect/collected/collecting roll/rolled/rolling kick/kicked/kicking sail/sailed/sailing
wear/wore/wearing ring/rang/ringing open/opened/opening carry/carried/carrying fill/filled/filling
hold/held/holding turn/turned/turning pull/pulled/pulling fold/folded/folding hug/hugged/hugging
spin/spun/spinning use/used/using walk/walked/walking swim/swam/swimming crawl/crawled/crawling""".split())}


def conjugate(phrase: str, form: int) -> str:
    """"kick the ball" -> form 0: as is, 1: "kicked the ball", 2: "kicking the ball"."""
    verb, _, rest = phrase.partition(" ")
    word = verb if form == 0 else _VERBS[verb][form - 1]
    return f"{word} {rest}".rstrip()


_IRREGULAR = {"mouse": "mice", "sheep": "sheep", "fish": "fish", "deer": "deer", "leaf": "leaves",
              "shelf": "shelves", "scarf": "scarves", "potato": "potatoes", "tomato": "tomatoes"}


def plural(noun: str) -> str:
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith(("s", "x", "ch", "sh", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def word_list(items: list[str]) -> str:
    """["a hat", "a ball", "an egg"] -> "a hat, a ball and an egg"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
