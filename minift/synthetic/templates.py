"""The story world's sentence templates: openings, fillers, problems and their resolutions,
endings, descriptions and diary entries. minift/synthetic/world.py fills their {slots} from a story's
context (see its docstring) and re-exports them."""

# ------------------------------------------------------------------------------------------
# Templates. One unit per line; " | " separates sentences of a multi-sentence unit, and a
# problem line is "problem sentences || resolution sentences". Write "a" before any noun: the
# filler turns it into "an" before a vowel ("a {animal}" -> "an owl").

def _units(block: str) -> list[list[str]]:
    return [[s.strip() for s in line.split(" | ")] for line in block.strip().splitlines()]


OPENINGS = _units("""Once upon a time, there was a {little} {kind} named {hero}.
Once upon a time, in a small town, there lived a {little} {kind} named {hero}.
There once was a {little} {kind} called {hero}.
{hero} was a {little} {kind} who lived near the {place}.
One {weather} {time}, a {little} {kind} named {hero} woke up early.
One day, a {kind} named {hero} went to the {place}.
{hero} was a {kind} who loved to {hobby}.
It was a {weather} {season} day, and {hero} wanted to {act}.
{hero} lived in a {size} house with {his} {adult}.
Every {day}, {hero} liked to {hobby}.
In the {season}, {hero} liked to play {in_place}.
{hero} was a {little} {kind} with a big smile.
Once there was a {kind} named {hero} who never sat still.
Not long ago, a {little} {kind} named {hero} lived by the {place}.""")

# The first setup sentence introduces the story's focus (its object, food or animal).
INTROS = {
    "object": _units("""{hero} had a {look} {color} {thing}.
{he} had a {color} {thing} that {he} loved very much.
{his} favorite toy was a {size} {color} {thing}.
One day, {hero} found a {color} {thing} {in_place}.
{his} {adult} gave {him} a {look} {color} {thing}.
{hero} had a {size} {thing}, and it was {color} and {feel}."""),
    "food": _units("""{his} {adult} gave {him} a {food}.
{hero} had a big {food} in {his} bag.
{hero} loved to eat {foods} more than anything.
One day, {hero} saw a {food} on the table.
{hero} wanted a {food} for {meal}."""),
    "animal": _units("""{hero} had a {asize} {animal} as a pet.
{hero} had a pet {animal} who liked to {move}.
One day, {hero} found a little {animal} {in_place} and took it home.
{hero} loved {his} {animal} very much.
{his} {adult} brought home a little {animal} for {him}."""),
}

FILLERS = _units("""{hero} had a friend named {new_friend}.
{new_friend} was {hero}'s best friend, and they liked to {act} together.
{hero} and {friend} went to the {place} to {act}.
It was a {weather} day, so {hero} went to the {place}.
The {place} was {place_adj} and {place_adj2}.
There were {list_items} {in_place}.
{hero} saw {the_animal} {in_place}.
"Let's {act}!" said {hero}. | "Yes, let's!" said {friend}.
"Can I {play} too?" asked {friend}. | "Of course you can!" said {hero}.
"Look at that {animal}!" said {friend}.
"I love the {place}!" said {hero}.
"What a {look} {thing}!" said {friend}.
"Where are we going?" asked {friend}. | "To the {place}!" said {hero}.
{hero} and {friend} {acted} {in_place}.
All {time}, {hero} and {friend} {acted} and {acted}.
{hero} {acted} while {friend} {acted}.
{hero} felt {good} because {he} was with {friend}.
The sun was warm, so {hero} sat under a tree.
It was {weather}, so {hero} put on {his} {clothes}.
{hero} wanted to {act}, but {friend} wanted to {act}. | So they did both!
Then {hero} saw {the_animal}. | {the_animal} said, "{sound}!"
{the_animal} {moved} to {hero}. | {hero} smiled and waved.
"What is that?" asked {friend}. | "It is a {animal}," said {hero}.
{hero} counted {num} {items} {in_place}.
{hero} put {pack_list} in {his} bag.
{hero} was hungry, so {he} ate a {food}.
{hero} gave {friend} a {food}, and they ate it together.
{hero} liked to {play} {in_place}.
{hero} {played} {in_place} all {time}.
Every day, {hero} would {play} after {meal}.
{he} held the {thing} up high and laughed.
The {thing} was {color} like {color_thing}.
{hero} asked {his} {adult}, "Can we go to the {place}?" | "Yes, we can," said {his} {adult}.
{his} {adult} said, "Be careful with your {thing}."
On the way, they saw {num} {animals}.
{hero} and {friend} were {playing} when they heard a noise. | It was {the_animal}!
What was that sound? | It was just {the_animal}!
{hero} ran to the {item} and back.
The wind was soft, and the sky was blue.
{hero} liked the {place} because it was {place_adj}.
{hero} did not like the rain, but {he} liked the puddles.
{hero} was {bad} at first, but then {he} felt better.
"I am so {good}!" said {hero}.
"Do you want to {act}?" asked {hero}. | "Yes, please!" said {friend}.
{friend} showed {hero} how to {act}.
After {meal}, {hero} went outside to {act}.
{hero} was not {bad}, because {friend} was there.
{hero} and {friend} sat on a {item} and talked.
Who was at the door? | It was {friend}!
{friend} said, "Your {thing} is very {look}!"
First {hero} and {friend} {acted}, and then they {acted}.""")

PROBLEMS = {
    "object": [line.split(" || ") for line in """One day, {hero} could not find {his} {thing}. | {he} looked under the bed and behind the door. || At last, {he} found it {in_place}. | {he} hugged {his} {thing} and smiled.
While {hero} was playing, {his} {thing} broke. | {hero} began to cry. || {his} {adult} came and fixed the {thing}. | "Thank you!" said {hero}.
The wind blew {his} {thing} into a tall tree. | {hero} could not reach it. || {friend} got a long stick and pushed the {thing} down. | {hero} and {friend} laughed.
{friend} wanted to {play}, but {hero} did not want to share. | {friend} felt {bad}. || Then {hero} gave the {thing} to {friend}, and they took turns. | Now they were both {good}. | {hero} learned that sharing makes everyone happy.
{hero} dropped {his} {thing} in the mud. | Now it was dirty. || {his} {adult} helped {him} wash it. | Soon the {thing} was clean and {color} again.
{hero} left {his} {thing} {in_place} and went home. | At night, {he} felt {bad}. || The next morning, {he} ran back, and the {thing} was still there! | {hero} held it tight and smiled.
A big dog ran off with {hero}'s {thing}! | "Stop!" shouted {hero}. || The dog dropped the {thing} near a {item}. | {hero} picked it up and laughed.""".splitlines()],
    "food": [line.split(" || ") for line in """{hero} saw a {food} on a high shelf. | {he} could not reach it. || {friend} brought a chair, so {hero} could reach the {food}. | {hero} said, "Thank you!"
{hero} had one {food}, but {friend} was hungry too. || {hero} cut the {food} in two. | They each ate half, and it was yummy.
{hero} dropped {his} {food} on the ground. | {he} felt {bad}. || {his} {adult} gave {him} a new {food}. | {hero} said, "Thank you!"
A big dog took {hero}'s {food} and ran away! | "Come back!" shouted {hero}. || {his} {adult} laughed and gave {him} another {food}. | This time, {hero} ate it at the table.
{hero} ate {his} {food} too fast. | {his} tummy hurt. || {his} {adult} told {him} to rest, and soon {he} felt better. | Next time, {hero} ate slowly.
{hero} wanted to eat all the {foods}, but there were not enough for everyone. || {he} decided to share them. | Everyone got one, and {hero} felt {good}. | Sharing is better than eating it all.""".splitlines()],
    "animal": [line.split(" || ") for line in """One day, {his} {animal} {moved} away. | {hero} looked everywhere for it. || At last, {he} found the {animal} {in_place}. | {hero} was so {good} to see it.
{hero} saw a little {animal} that was stuck in a hole. | The {animal} was {bad}. || {hero} and {friend} helped it out. | The {animal} {moved} away, {good} and free.
{hero} found a {animal} that was hurt. || {he} took it home and cared for it. | Soon the {animal} was well again. | {hero} was glad {he} had helped.
{his} {animal} was hungry, but {hero} had no food for it. || {his} {adult} gave {him} some {likes}. | The {animal} ate them all up.
{hero} heard a {animal} crying {in_place}. | It was lost. || {hero} helped the {animal} find its mom. | The {animal} and its mom were {good}.
{hero} wanted to play, but {his} {animal} was asleep. || So {hero} waited until it woke up. | Then they played together all {time}.""".splitlines()],
    # These fit any story, but do not mention its focus, so they need an intro sentence first.
    "any": [line.split(" || ") for line in """It started to rain, and {hero} got wet. | {he} felt cold and {bad}. || {friend} shared an umbrella with {him}. | Soon the sun came out again.
{hero} got lost {in_place}. | {he} was scared. || Then {he} saw {his} {adult}. | {his} {adult} gave {him} a big hug.
{friend} fell down and hurt {fhis} knee. | {friend} began to cry. || {hero} helped {fhim} up. | "Are you okay?" asked {hero}. | {hero} learned that it is good to help your friends.
{hero} and {friend} had a fight. | They both felt {bad}. || Then {hero} said, "I am sorry." | {friend} smiled, and they were friends again. | It is good to say sorry.
{hero} wanted to {skill}, but {he} did not know how. || {friend} showed {him} how. | Soon {hero} could {skill} all by {himself}.""".splitlines()],
}

ENDINGS = _units("""From that day on, {hero} and {friend} were best friends.
From that day on, {hero} took good care of {his} {keepsake}.
It was the best day ever.
That night, {hero} went to bed with a big smile.
{hero} and {friend} played until the sun went down.
{hero} was {good}, and {friend} was {good} too.
The end.
{hero} hugged {his} {adult} and said, "I love you."
And they all lived happily ever after.
Then it was time to go home.
{hero} could not wait to play again the next day.
{hero} said, "This was a good day!\"""")

# Descriptions are in the present tense (a few, such as "{hero} saw a {animal}", tell of one
# day). Per kind: first sentences (they name the thing), "--", then sentences in any order.
def _intro_body(block: str) -> tuple[list[list[str]], list[list[str]]]:
    intro, body = block.split("\n--\n")
    return _units(intro), _units(body)


DESCRIBE = {
    "object": _intro_body("""A {thing} can be big or small.
{hero} has a {size} {color} {thing}.
The {thing} is {size} and {color}.
--
It is {look} and {feel}.
{hero} likes to {play}.
You can {play} {in_place}.
Many children have a {thing}.
Some {things} are {color}, and some are {color2}.
{hero} keeps {his} {thing} in {his} room.
You can buy a {thing} at the shop.
It is fun to {play}.
{hero} and {friend_name} like to {play} together.
{hero} takes good care of it."""),
    "animal": _intro_body("""A {animal} is a {asize} animal.
{animals} are animals that live {home}.
The {animal} is a {asize} animal that likes {likes}.
--
{animals} live {home}.
A {animal} has {has}.
It can {move}.
{animals} like {likes}.
A {animal} says, "{sound}!"
{hero} saw a {animal} {in_place} one day.
Children like to watch {animals}.
A baby {animal} is very small.
{hero} wants a {animal} as a pet.
Some {animals} are {good}, and some are {bad}."""),
    "food": _intro_body("""A {food} is a kind of food.
{foods} are {taste} and {taste2}.
A {food} is a {fcolor} food that {hero} likes.
--
A {food} {origin}.
It is {taste} and {taste2}.
Most {foods} are {fcolor}.
{hero} likes to eat a {food} for {meal}.
You can buy {foods} at the shop.
Some children do not like {foods}.
{hero} likes to share {foods} with {friend_name}.
{hero} has a {food} in {his} bag.
{foods} are good for you.
{hero}'s {adult} likes {foods} too."""),
    "place": _intro_body("""The {place} is a {place_adj} place.
The {place} is {place_adj} and {place_adj2}.
There are {list_items} {in_place}.
--
There are {list_items} there.
You can see a {item} there.
Children like to go to the {place}.
Many people like the {place} in the {season}.
{hero} goes to the {place} every {day}.
At night, it is dark and quiet.
Children like to play {in_place}.
{hero} likes it because it is {place_adj}.
It is {place_adj2} in the {time}."""),
    "name": _intro_body("""{hero} is a {little} {kind}.
{hero} is a {kind} who likes to {act}.
--
{he} is {num} years old.
{he} likes to {act}.
{his} favorite color is {color}.
{his} best friend is {friend_name}.
{he} lives near the {place}.
{he} has a {color} {thing}.
{he} is often {good}.
{he} does not like to be {bad}.
Every {day}, {he} goes to the {place} with {his} {adult}."""),
}

# A short first-person diary entry: another voice ("I", "my", "we") for variety.
DIARY = _intro_body("""Today I went to the {place} with my {adult}.
Today was a {weather} day, and I went to the {place}.
--
I saw {num} {animals} there.
We {acted} {in_place}.
I ate a {food} for lunch.
My friend {friend_name} came too.
It was {weather}, so I wore my {clothes}.
I found a {color} {thing} on the way.
My {adult} and I {acted}.
The {place} was {place_adj} and {place_adj2}.
I wanted to {act}, but it was time to go.""")
DIARY_END = _units("""I felt very {good}.
We went home when the sun went down.
I can't wait to go back!
It was a good day.""")

ALL_TEMPLATES = [s for group in (OPENINGS, FILLERS, ENDINGS, DIARY_END, *DIARY, *INTROS.values(),
                                  *(g for pair in DESCRIBE.values() for g in pair))
                 for unit in group for s in unit]
ALL_TEMPLATES += [s for pairs in PROBLEMS.values() for pair in pairs for half in pair for s in half.split(" | ")]
