"""Word lists of the near-miss guard (:mod:`tierlm.layer0.guard`), as text: one owner, read
once at import by :func:`words`."""

from __future__ import annotations


def words(text: str) -> list[str]:
    return text.split()


# number word, its value; ...
NUMBER_WORDS = """
zero 0 one 1 two 2 three 3 four 4 five 5 six 6 seven 7 eight 8 nine 9 ten 10 eleven 11
twelve 12 thirteen 13 fourteen 14 fifteen 15 sixteen 16 seventeen 17 eighteen 18 nineteen 19
twenty 20 thirty 30 forty 40 fifty 50 sixty 60 seventy 70 eighty 80 ninety 90 hundred 100
thousand 1000 million 1000000 billion 1000000000 dozen 12 half 0.5 once 1 twice 2 single 1
couple 2 pair 2 triple 3 double 2
"""
# in order: zeroth is 0
ORDINALS = """
zeroth first second third fourth fifth sixth seventh eighth ninth tenth
"""
NEGATIONS = """
avoid cannot except excluding neither never no nobody non none nor not nothing without
"""
POLAR = """
on off up down open close closed shut start stop enable disable enabled disabled increase
decrease raise lower higher more less fewer before after above below over under min max
minimum maximum buy sell add remove delete create lock unlock allow deny block accept reject
true false hot cold warm cool fast slow old new young north south east west left right input
output import export encrypt decrypt encode decode compress decompress upload download push
pull send receive win lose plus minus largest smallest biggest highest lowest best worst
cheapest fastest slowest hottest coldest oldest youngest newest earliest latest most least
longest shortest heaviest lightest older younger bigger smaller larger heavier taller
cheaper better worse stronger weaker richer poorer faster slower warmer colder longer newer
earlier later strongest weakest richest poorest tallest deepest safest easiest hardest pros
cons advantages disadvantages benefits risks similarities differences synonym antonym
singular plural past future present uppercase lowercase ascending descending forward
backward inside outside install uninstall
"""
MONTHS = """
january february march april june july august september october november december jan feb
mar apr jun jul aug sep sept oct nov dec
"""
DATE_WORDS = """
afternoon ago annually autumn daily evening fall friday hourly monday monthly morning night
saturday spring summer sunday thursday today tomorrow tonight tuesday wednesday weekend
weekly winter yearly yesterday
"""
LANGUAGES = """
arabic bengali bulgarian cantonese catalan chinese croatian czech danish deutsch dutch
english espanol español finnish francais français french german greek hebrew hindi hungarian
indonesian italian italiano japanese korean latin malay mandarin nederlands norwegian
persian polish portuguese português romanian russian serbian spanish swahili swedish thai
turkish ukrainian urdu vietnamese
"""
FORMATS = """
bash bullet bullets c++ code csv diagram email essay go haiku html java javascript joke json
latex letter limerick list markdown numbered outline poem python regex rust shell slogan
song sonnet sql story table tables tweet typescript xml yaml
"""
SHORT = """
short shorter brief briefly concise concisely quick quickly summary tl;dr tldr succinct
succinctly
"""
LONG = """
long longer detailed detail depth thorough thoroughly comprehensive elaborate extensive
exhaustive
"""
COMMON = """
a about actually again all also am an and another any anything are as at be because been
being between bit both briefly but by calculate can compare compute convert could create
define definition describe did difference do does don't done each either every everything
explain few find for from get give had has have having he help her here him his how how's i
i'd i'm i've if in into is it it's its just kind kindly know let let's like list little lot
lots make many may maybe me me. mean meaning means might mine much must my need now of ok
okay on one ones onto or other our per perhaps please quick quickly really said say says set
shall she should show so some something sort still such summarise summarize tell than that
that's the their them then there these they thing things this those to too translate turn
type us use used using versus very via vs want was way ways we well were what what's when
where whether which while who who's whom whose why will with would write yes you your
"""
# canonical unit: its spellings
UNITS = {
    "km": "km kilometer kilometers kilometre kilometres kms",
    "m": "m meter meters metre metres",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "mm": "mm millimeter millimeters",
    "mi": "mi mile miles",
    "ft": "ft foot feet",
    "in": "inch inches",
    "kg": "kg kilogram kilograms kilo kilos",
    "g": "g gram grams",
    "lb": "lb lbs pound pounds",
    "oz": "oz ounce ounces",
    "l": "l liter liters litre litres",
    "ml": "ml milliliter milliliters",
    "gal": "gal gallon gallons",
    "c": "c °c celsius centigrade",
    "f": "°f fahrenheit",
    "k": "kelvin",
    "s": "s sec secs second seconds",
    "min": "min mins minute minutes",
    "h": "h hr hrs hour hours",
    "day": "day days",
    "week": "week weeks",
    "month": "month months",
    "year": "year years yr yrs",
    "usd": "$ usd dollar dollars",
    "eur": "€ eur euro euros",
    "gbp": "£ gbp sterling",
    "%": "% percent pct",
    "gb": "gb gigabyte gigabytes",
    "mb": "mb megabyte megabytes",
    "kb": "kb kilobyte kilobytes",
    "tb": "tb terabyte terabytes",
    "w": "w watt watts",
    "kw": "kw kilowatt kilowatts",
    "kwh": "kwh",
    "v": "v volt volts",
    "a": "a amp amps ampere amperes",
    "bar": "bar bars",
    "psi": "psi",
    "rpm": "rpm",
    "pm": "pm",
    "am": "am",
    "word": "word words",
    "sentence": "sentence sentences",
    "paragraph": "paragraph paragraphs",
    "line": "line lines",
    "bullet": "bullet bullets",
    "item": "item items",
    "step": "step steps",
    "example": "example examples",
    "times": "times x",
}
AMBIGUOUS_UNITS = """
a am c example g h in item k l line m pm s second seconds step times v w word x
"""
