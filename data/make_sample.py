"""Deterministic generator of synthetic podcast transcript chunks.

Produces ``data/sample_chunks.parquet``: invented podcasts, episodes and spoken-English
transcript chunks with topical vocabulary, so retrieval over the text is meaningful
(a chunk about sourdough sits nearer a sourdough query than an astronomy chunk).

All randomness comes from ``random.Random(seed)``; the only dependency is pyarrow.
The module is self-contained so other code can load it by path via importlib::

    spec = importlib.util.spec_from_file_location("make_sample", "data/make_sample.py")

Usage::

    python data/make_sample.py [--out PATH] [--seed N] [--podcasts N]
                               [--episodes-per-podcast N]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import statistics
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_SEED = 7
DEFAULT_PODCASTS = 5
DEFAULT_EPISODES_PER_PODCAST = 6
DEFAULT_OUT = Path(__file__).resolve().parent / "sample_chunks.parquet"
ROW_GROUP_SIZE = 128
LARGE_BATCH_ROWS = 5000

WORDS_PER_MINUTE = 150.0
DATE_START = datetime(2025, 1, 6, tzinfo=UTC)
DATE_END = datetime(2026, 6, 29, tzinfo=UTC)

SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string()),
        pa.field("episode_id", pa.string()),
        pa.field("podcast_id", pa.string()),
        pa.field("chunk_index", pa.int64()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("published_at", pa.timestamp("us", tz="UTC")),
        pa.field("text", pa.string()),
    ]
)

# ---------------------------------------------------------------------------
# Invented podcasts. Each has a host, a guest pool, podcast-wide vocabulary,
# podcast-wide sentences, and episode topics (title, keywords, topic sentences).
# Slots: {kw} episode keyword, {kw2} another keyword, {term} podcast term,
# {n:A-B} a random integer in [A, B], {guest} / {host} first names.
# ---------------------------------------------------------------------------

PODCASTS: list[dict[str, Any]] = [
    {
        "id": "pc-kitchen",
        "name": "The Proving Drawer",
        "host": "Dana",
        "guests": ["Marcus", "Priya", "Tomasz", "Elena", "Jun", "Beatriz", "Colm"],
        "terms": [
            "the oven",
            "a Dutch oven",
            "kosher salt",
            "unsalted butter",
            "the pan",
            "a digital scale",
            "bread flour",
            "the fridge",
            "a sheet pan",
            "olive oil",
            "the stovetop",
            "a chef's knife",
            "brown butter",
            "a wooden spoon",
            "the recipe",
        ],
        "sentences": [
            "Honestly the single best thing you can buy for your kitchen is {term}.",
            "We tested it at {n:350-475} degrees and it was done in about {n:12-40} minutes.",
            "Season as you go, taste as you go, that's the whole thing with cooking.",
            "If you weigh everything in grams with a scale, {kw} gets so much more consistent.",
            "My grandmother never measured anything, she just did it by feel, and it worked.",
            "I ruined probably {n:5-20} batches before I figured out {kw}.",
            "People are scared of salt, but under-seasoned food is the most common mistake.",
            "You want the fat hot before anything touches the pan, like shimmering hot.",
            "A lot of home cooks crowd the pan and then wonder why nothing browns.",
            "Mise en place sounds fussy but it saves you when things move fast.",
            "We got so many listener emails about {kw} after the last episode.",
            "Acid at the end, a squeeze of lemon or a splash of vinegar, wakes the dish up.",
        ],
        "topics": [
            {
                "title": "Keeping a Sourdough Starter Alive",
                "kw": [
                    "sourdough starter",
                    "the levain",
                    "wild yeast",
                    "hydration",
                    "feeding schedule",
                    "the rise",
                ],
                "lines": [
                    "Feed your sourdough starter at a one to one to one ratio, flour, water, "
                    "starter, and keep it somewhere around {n:74-80} degrees.",
                    "If the starter smells like nail polish remover it's just hungry, feed it.",
                    "A starter at {n:70-80} percent hydration behaves totally differently from a stiff one.",
                    "The float test is kind of a myth, watch whether it doubles instead.",
                    "Wild yeast and lactobacillus live together in the jar, that's the sour part.",
                    "Do the bulk ferment until the dough is jiggly and domed, not by the clock.",
                ],
            },
            {
                "title": "Cast Iron Without Fear",
                "kw": [
                    "cast iron",
                    "seasoning",
                    "the skillet",
                    "polymerized oil",
                    "rust",
                    "a thin coat of oil",
                ],
                "lines": [
                    "Seasoning on cast iron is just polymerized oil, baked onto the metal.",
                    "You can absolutely use a little dish soap on cast iron, modern soap is fine.",
                    "If you see rust, scrub it with steel wool and re-season it at {n:450-500} "
                    "degrees for an hour.",
                    "Wipe a thin coat of oil on the skillet while it's still warm after washing.",
                    "Tomato sauce in cast iron for {n:10-20} minutes is fine, just don't store it.",
                ],
            },
            {
                "title": "Knife Skills for Weeknights",
                "kw": [
                    "knife skills",
                    "the claw grip",
                    "a sharp knife",
                    "the honing steel",
                    "dicing an onion",
                    "the cutting board",
                ],
                "lines": [
                    "Use the claw grip, knuckles forward, fingertips tucked behind.",
                    "A sharp knife is safer than a dull one because it doesn't skid off the onion.",
                    "The honing steel realigns the edge, it doesn't actually sharpen it.",
                    "Put a damp towel under the cutting board so it doesn't slide around.",
                    "For dicing an onion leave the root end on, it holds the layers together.",
                ],
            },
            {
                "title": "Fermenting Kimchi and Sauerkraut",
                "kw": [
                    "lacto-fermentation",
                    "kimchi",
                    "sauerkraut",
                    "the brine",
                    "napa cabbage",
                    "the fermentation crock",
                ],
                "lines": [
                    "For sauerkraut you want about {n:2-3} percent salt by weight of the cabbage.",
                    "Keep the cabbage under the brine and mold basically can't get a foothold.",
                    "Kimchi with gochugaru and fish sauce goes sour and fizzy in about "
                    "{n:3-7} days on the counter.",
                    "Lacto-fermentation is lactic acid bacteria eating sugars and dropping the pH.",
                    "Burp the jar once a day or the fermentation crock gets really gassy.",
                ],
            },
            {
                "title": "The Art of the Braise",
                "kw": [
                    "braising",
                    "short ribs",
                    "the fond",
                    "low and slow",
                    "the braising liquid",
                    "collagen",
                ],
                "lines": [
                    "Sear the short ribs hard first, that fond on the bottom is pure flavor.",
                    "Braising is low and slow, around {n:275-325} degrees for {n:3-4} hours.",
                    "Collagen melts into gelatin and that's what makes a braise silky.",
                    "The braising liquid should come about two thirds up the meat, not cover it.",
                    "Braises are better the next day, skim the fat off the cold liquid.",
                ],
            },
            {
                "title": "Laminated Dough at Home",
                "kw": [
                    "laminated dough",
                    "croissants",
                    "the butter block",
                    "folds",
                    "puff pastry",
                    "proofing",
                ],
                "lines": [
                    "For croissants the butter block has to be the same texture as the dough.",
                    "We do {n:3-4} letter folds and rest it in the fridge between each one.",
                    "If butter leaks out while proofing croissants the proof is too warm.",
                    "Rough puff pastry is the shortcut version and it's honestly great.",
                    "You should see distinct layers, like a honeycomb, when you cut it.",
                ],
            },
            {
                "title": "Weeknight Pasta That Tastes Like Sunday",
                "kw": [
                    "pasta water",
                    "emulsifying the sauce",
                    "cacio e pepe",
                    "al dente",
                    "the starch",
                    "pecorino",
                ],
                "lines": [
                    "Save a cup of pasta water, the starch is what emulsifies the sauce.",
                    "Pull the pasta a minute or two before al dente and finish it in the pan.",
                    "Cacio e pepe is just pecorino, black pepper and pasta water, but it's tricky.",
                    "If the pecorino clumps, the pan was too hot, take it off the heat.",
                    "Salt the water like, {n:1-2} tablespoons per gallon, not like the sea.",
                ],
            },
            {
                "title": "Building Your Own Spice Blends",
                "kw": [
                    "spice blends",
                    "toasting whole spices",
                    "garam masala",
                    "cumin seed",
                    "the spice grinder",
                    "za'atar",
                ],
                "lines": [
                    "Toast whole spices in a dry pan until they smell nutty, maybe {n:1-3} minutes.",
                    "Ground spices lose most of their aroma in about {n:6-12} months.",
                    "Our garam masala has cumin seed, coriander, cardamom, clove and cinnamon.",
                    "Za'atar is thyme, sumac and sesame, and it's great on eggs.",
                    "A cheap blade coffee grinder makes a perfect spice grinder.",
                ],
            },
        ],
    },
    {
        "id": "pc-astro",
        "name": "Low Orbit Radio",
        "host": "Ravi",
        "guests": ["Dr. Okafor", "Hannah", "Dr. Lindqvist", "Mateo", "Dr. Sato", "Yara"],
        "terms": [
            "the telescope",
            "the light curve",
            "the spectrum",
            "the Milky Way",
            "a light year",
            "the observatory",
            "the data",
            "the detector",
            "the night sky",
            "a galaxy",
            "the signal",
            "the model",
        ],
        "sentences": [
            "The thing people forget is how far away everything is, like {n:4-900} light years.",
            "When you look at {term}, you're literally looking back in time.",
            "We took something like {n:200-3000} exposures to get that one image.",
            "The physics of {kw} is actually pretty elegant once you see it.",
            "Astronomers are really just very patient people with cold hands.",
            "What got me into this was seeing Saturn's rings through a friend's scope.",
            "The honest answer is we don't know yet, and that's the exciting part.",
            "A lot of the big discoveries about {kw} came from amateurs with good data.",
            "You need dark skies, so get at least {n:30-90} minutes out of the city.",
            "The error bars on that measurement were huge, to be fair.",
            "Light pollution is a real problem for {kw} now.",
        ],
        "topics": [
            {
                "title": "Finding Exoplanets by Their Shadows",
                "kw": [
                    "exoplanets",
                    "the transit method",
                    "the light curve",
                    "the habitable zone",
                    "the host star",
                    "radial velocity",
                ],
                "lines": [
                    "With the transit method you see the star dim by maybe {n:1-3} percent when "
                    "the planet crosses in front.",
                    "Radial velocity measures the star wobbling as the exoplanet tugs on it.",
                    "The habitable zone is where liquid water could exist on the surface.",
                    "We've confirmed over {n:5000-5800} exoplanets and most are weird, like hot Jupiters.",
                    "The light curve has this flat-bottomed dip that's the signature of a transit.",
                ],
            },
            {
                "title": "Your First Backyard Telescope",
                "kw": [
                    "a Dobsonian",
                    "aperture",
                    "the eyepiece",
                    "collimation",
                    "the finder scope",
                    "magnification",
                ],
                "lines": [
                    "Aperture matters way more than magnification, get the biggest mirror you can carry.",
                    "An {n:6-10} inch Dobsonian is the best first telescope, hands down.",
                    "Collimation is just lining up the mirrors, it takes five minutes with a tool.",
                    "Start with a low power eyepiece so you can actually find things.",
                    "Align the finder scope during the day on a distant tree or pole.",
                ],
            },
            {
                "title": "What Is Dark Matter, Really",
                "kw": [
                    "dark matter",
                    "rotation curves",
                    "gravitational lensing",
                    "WIMPs",
                    "galaxy clusters",
                    "the missing mass",
                ],
                "lines": [
                    "Galaxy rotation curves stay flat at the edges, which means missing mass.",
                    "Gravitational lensing lets us map dark matter by how it bends background light.",
                    "Dark matter is roughly {n:80-85} percent of the matter in the universe.",
                    "The WIMP searches in underground detectors keep coming up empty.",
                    "The Bullet Cluster is the famous case where the mass and the gas separated.",
                ],
            },
            {
                "title": "The Solar Cycle and Chasing Auroras",
                "kw": [
                    "the solar cycle",
                    "sunspots",
                    "coronal mass ejections",
                    "the aurora",
                    "geomagnetic storms",
                    "the Kp index",
                ],
                "lines": [
                    "The solar cycle is about eleven years and we're near solar maximum.",
                    "A coronal mass ejection takes {n:1-4} days to reach Earth.",
                    "Check the Kp index, anything above {n:5-7} and the aurora comes way south.",
                    "Sunspots are cooler regions where the magnetic field is tangled up.",
                    "Phone cameras pick up aurora colors your eyes can barely see.",
                ],
            },
            {
                "title": "Variable Stars and Citizen Science",
                "kw": [
                    "variable stars",
                    "Cepheids",
                    "the period-luminosity relation",
                    "eclipsing binaries",
                    "magnitude estimates",
                    "citizen science",
                ],
                "lines": [
                    "Cepheids pulse with a period tied to their luminosity, that's the key.",
                    "Henrietta Leavitt found the period-luminosity relation and it gave us a cosmic ruler.",
                    "Eclipsing binaries dim when one star passes in front of the other.",
                    "Citizen science volunteers have submitted millions of magnitude estimates.",
                    "Some variable stars change brightness over {n:2-400} days.",
                ],
            },
            {
                "title": "Meteor Showers Explained",
                "kw": [
                    "meteor showers",
                    "the radiant",
                    "the Perseids",
                    "comet debris",
                    "zenithal hourly rate",
                    "fireballs",
                ],
                "lines": [
                    "Meteor showers happen when Earth plows through comet debris.",
                    "The Perseids peak in August with maybe {n:50-100} meteors an hour.",
                    "Don't stare at the radiant, look about forty degrees away from it.",
                    "A fireball is just a meteor brighter than Venus.",
                    "Most meteors are the size of a grain of sand, moving {n:20-70} kilometers a second.",
                ],
            },
            {
                "title": "Black Holes and the Event Horizon",
                "kw": [
                    "black holes",
                    "the event horizon",
                    "accretion disks",
                    "Hawking radiation",
                    "spaghettification",
                    "supermassive black holes",
                ],
                "lines": [
                    "Nothing escapes past the event horizon, not even light.",
                    "The accretion disk glows because the gas heats to millions of degrees.",
                    "Supermassive black holes sit at the center of almost every big galaxy.",
                    "Hawking radiation means black holes slowly evaporate, really slowly.",
                    "Spaghettification is exactly as bad as it sounds, tidal forces stretch you.",
                ],
            },
            {
                "title": "Reading the Spectrum of a Star",
                "kw": [
                    "spectroscopy",
                    "absorption lines",
                    "redshift",
                    "stellar classification",
                    "the diffraction grating",
                    "metallicity",
                ],
                "lines": [
                    "Absorption lines in the spectrum tell you what the star is made of.",
                    "Redshift shifts those lines toward red when the object moves away.",
                    "Stellar classification goes O B A F G K M, hottest to coolest.",
                    "A cheap diffraction grating on a camera gets you real spectroscopy.",
                    "Metallicity is astronomer-speak for anything heavier than helium.",
                ],
            },
        ],
    },
    {
        "id": "pc-biz",
        "name": "Main Street Ledger",
        "host": "Carla",
        "guests": ["Ahmed", "Sophie", "Dwayne", "Mei", "Gustavo", "Nora", "Patrick"],
        "terms": [
            "the business",
            "cash",
            "customers",
            "the bank",
            "the margin",
            "the spreadsheet",
            "the storefront",
            "the accountant",
            "revenue",
            "the team",
            "suppliers",
            "the budget",
        ],
        "sentences": [
            "When we opened the shop we had maybe {n:3-15} thousand dollars in the account.",
            "Every owner I talk to says {kw} is the thing that keeps them up at night.",
            "Revenue is vanity, profit is sanity, cash is king, you've heard it.",
            "We were doing like {n:20-90} transactions a day in the first year.",
            "Talk to {term} early, don't wait until there's a problem.",
            "I wish somebody had explained {kw} to me before I signed anything.",
            "Small businesses don't fail from lack of passion, they fail from running out of money.",
            "Track it weekly, not monthly, because by month end it's too late.",
            "Our margin was around {n:8-45} percent, which for retail is decent.",
            "You wear every hat in the beginning, marketing, payroll, plumbing.",
        ],
        "topics": [
            {
                "title": "Cash Flow Is Oxygen",
                "kw": [
                    "cash flow",
                    "accounts receivable",
                    "net 30 terms",
                    "a cash flow forecast",
                    "the line of credit",
                    "working capital",
                ],
                "lines": [
                    "Build a thirteen week cash flow forecast and update it every Monday.",
                    "Net 30 terms from suppliers but customers paying in {n:45-90} days will kill you.",
                    "A line of credit is something you open when you don't need it.",
                    "Chase accounts receivable politely but on a schedule.",
                    "Working capital is what lets you survive a slow quarter.",
                ],
            },
            {
                "title": "Pricing Without Apologizing",
                "kw": [
                    "pricing",
                    "cost-plus pricing",
                    "value-based pricing",
                    "a price increase",
                    "the gross margin",
                    "discounts",
                ],
                "lines": [
                    "Cost-plus pricing ignores what the customer actually values.",
                    "We raised prices {n:8-20} percent and lost maybe two customers.",
                    "Announce a price increase with notice and a reason, then stick to it.",
                    "Discounts train your customers to wait for discounts.",
                    "Know your gross margin on every single product line.",
                ],
            },
            {
                "title": "Hiring Your First Employee",
                "kw": [
                    "hiring",
                    "the first employee",
                    "payroll taxes",
                    "the job description",
                    "onboarding",
                    "workers' comp",
                ],
                "lines": [
                    "Your first employee costs maybe {n:20-30} percent more than the wage once you "
                    "add payroll taxes.",
                    "Write the job description around outcomes, not a list of tasks.",
                    "Workers' comp insurance is required in most states once you hire.",
                    "Onboarding should be written down, even if it's a shared doc.",
                    "Hire for attitude, train for skill, it's a cliche because it's true.",
                ],
            },
            {
                "title": "Inventory That Doesn't Eat Your Cash",
                "kw": [
                    "inventory",
                    "dead stock",
                    "inventory turnover",
                    "reorder points",
                    "the point of sale system",
                    "shrinkage",
                ],
                "lines": [
                    "Dead stock is cash sitting on a shelf collecting dust.",
                    "Our inventory turnover went from {n:2-4} to {n:5-8} times a year.",
                    "Set reorder points in the point of sale system so you're not guessing.",
                    "Shrinkage is the polite word for theft and breakage.",
                    "Do a full physical count at least once a quarter.",
                ],
            },
            {
                "title": "Marketing on a Shoestring",
                "kw": [
                    "local marketing",
                    "word of mouth",
                    "the email list",
                    "social media",
                    "the Google business profile",
                    "a referral program",
                ],
                "lines": [
                    "The email list is the only audience you actually own.",
                    "Claim your Google business profile and answer every review.",
                    "A referral program with a {n:10-25} dollar credit brought in half our new customers.",
                    "Word of mouth is still the best marketing, you just have to nudge it.",
                    "Post on social media consistently, even if it feels like shouting into a void.",
                ],
            },
            {
                "title": "Bookkeeping and Sales Tax Basics",
                "kw": [
                    "bookkeeping",
                    "sales tax",
                    "quarterly estimated taxes",
                    "the chart of accounts",
                    "receipts",
                    "reconciling the bank",
                ],
                "lines": [
                    "Reconcile the bank account every month, it takes an hour.",
                    "Sales tax collected is not your money, put it in a separate account.",
                    "Quarterly estimated taxes snuck up on me the first year, big bill.",
                    "Keep a simple chart of accounts, you don't need {n:200-400} categories.",
                    "Snap photos of receipts the day you get them.",
                ],
            },
            {
                "title": "Negotiating a Commercial Lease",
                "kw": [
                    "the commercial lease",
                    "triple net",
                    "tenant improvements",
                    "the personal guarantee",
                    "rent abatement",
                    "the landlord",
                ],
                "lines": [
                    "Triple net means you pay taxes, insurance and maintenance on top of rent.",
                    "Ask for {n:2-6} months of rent abatement while you build out.",
                    "Tenant improvements allowance can cover a lot of the buildout.",
                    "Try to cap the personal guarantee or burn it off after a couple years.",
                    "The landlord wants a stable tenant more than squeezing every dollar.",
                ],
            },
            {
                "title": "Handling Bad Reviews",
                "kw": [
                    "online reviews",
                    "a one-star review",
                    "customer complaints",
                    "the public reply",
                    "refunds",
                    "customer service",
                ],
                "lines": [
                    "Reply to a one-star review within a day, calm and specific.",
                    "The public reply is really for the next hundred people reading it.",
                    "Most customer complaints are about waiting, not the product.",
                    "Offer refunds quickly, it's cheaper than the bad word of mouth.",
                    "We got our rating from {n:3-4}.1 to 4.{n:5-8} in about a year.",
                ],
            },
        ],
    },
    {
        "id": "pc-history",
        "name": "Footnotes and Empires",
        "host": "Owen",
        "guests": ["Professor Adeyemi", "Ingrid", "Dr. Castellanos", "Lena", "Farid", "Ruth"],
        "terms": [
            "the archive",
            "the sources",
            "the empire",
            "the chronicle",
            "the merchants",
            "the peasants",
            "the court",
            "the primary sources",
            "the archaeology",
            "the century",
            "the historians",
            "the letters",
        ],
        "sentences": [
            "We're talking roughly {n:1100-1800}, give or take a few decades.",
            "The primary sources on {kw} are frustratingly thin, honestly.",
            "Historians argued about {kw} for like a hundred years.",
            "If you read {term} carefully, a different story comes out.",
            "It's easy to judge them from now, but they didn't know how it ended.",
            "The popular version of this story is mostly wrong, or at least exaggerated.",
            "There's a letter from around then that describes it in amazing detail.",
            "Archaeology keeps overturning what we thought we knew about {kw}.",
            "Something like {n:10-60} percent of the population was affected.",
            "The chroniclers had their own agendas, they were writing for patrons.",
        ],
        "topics": [
            {
                "title": "Roads and Aqueducts of Rome",
                "kw": [
                    "Roman roads",
                    "aqueducts",
                    "the legions",
                    "Roman concrete",
                    "the Via Appia",
                    "engineering",
                ],
                "lines": [
                    "Roman roads had layers, gravel, sand, then fitted paving stones on top.",
                    "The aqueducts dropped maybe a few centimeters per kilometer, super precise.",
                    "Roman concrete with volcanic ash actually gets stronger in seawater.",
                    "The Via Appia was started in {n:310-315} BC and parts of it are still there.",
                    "The legions built most of the roads, soldiers were also laborers.",
                ],
            },
            {
                "title": "Merchants of the Silk Road",
                "kw": [
                    "the Silk Road",
                    "caravans",
                    "Samarkand",
                    "caravanserais",
                    "silk and spices",
                    "trade networks",
                ],
                "lines": [
                    "The Silk Road wasn't one road, it was a web of trade networks.",
                    "Caravans stopped at caravanserais every {n:20-40} kilometers or so.",
                    "Samarkand got rich as a crossroads for silk and spices and paper.",
                    "Ideas moved along with goods, religions, technology, and diseases.",
                    "Hardly anyone traveled the whole route, goods passed hand to hand.",
                ],
            },
            {
                "title": "The Printing Press Changes Everything",
                "kw": [
                    "the printing press",
                    "Gutenberg",
                    "movable type",
                    "pamphlets",
                    "literacy",
                    "the Reformation",
                ],
                "lines": [
                    "Gutenberg's movable type press was around 1450 in Mainz.",
                    "Within fifty years there were presses in over {n:200-270} cities.",
                    "Pamphlets spread Reformation arguments faster than anyone could censor them.",
                    "Literacy rates rose, slowly, but books got way cheaper.",
                    "Printers were basically the tech startups of the fifteenth century.",
                ],
            },
            {
                "title": "Living Through the Black Death",
                "kw": [
                    "the Black Death",
                    "the plague",
                    "flagellants",
                    "quarantine",
                    "labor shortages",
                    "the Statute of Labourers",
                ],
                "lines": [
                    "The Black Death killed maybe a third to half of Europe in a few years.",
                    "Venice pioneered quarantine, forty days for ships, quaranta giorni.",
                    "Labor shortages after the plague pushed wages up for peasants.",
                    "The Statute of Labourers tried to freeze wages and basically failed.",
                    "Flagellants marched town to town whipping themselves as penance.",
                ],
            },
            {
                "title": "Navigating the Age of Sail",
                "kw": [
                    "celestial navigation",
                    "the sextant",
                    "longitude",
                    "the marine chronometer",
                    "dead reckoning",
                    "trade winds",
                ],
                "lines": [
                    "Latitude was easy from the sun, longitude was the real problem.",
                    "Harrison's marine chronometer finally solved longitude at sea.",
                    "Dead reckoning is speed, heading, time, and a lot of hoping.",
                    "Ships rode the trade winds, routes were about wind, not distance.",
                    "A good navigator with a sextant could get within {n:5-30} miles.",
                ],
            },
            {
                "title": "Mill Towns of the Industrial Revolution",
                "kw": [
                    "the Industrial Revolution",
                    "textile mills",
                    "the spinning jenny",
                    "child labor",
                    "the factory system",
                    "steam power",
                ],
                "lines": [
                    "Textile mills ran twelve to fourteen hour shifts, six days a week.",
                    "The spinning jenny let one worker run {n:8-80} spindles at once.",
                    "Child labor in mills was normal until the factory acts.",
                    "Steam power meant mills didn't have to sit next to rivers anymore.",
                    "The factory system changed what time itself meant, clocks and bells.",
                ],
            },
            {
                "title": "Byzantium After Rome",
                "kw": [
                    "Byzantium",
                    "Constantinople",
                    "the Hagia Sophia",
                    "Greek fire",
                    "the Theodosian walls",
                    "Justinian",
                ],
                "lines": [
                    "Constantinople's Theodosian walls held for about a thousand years.",
                    "Justinian built the Hagia Sophia in under six years.",
                    "Greek fire was a naval weapon and we still don't know the recipe.",
                    "They called themselves Romans, Byzantine is a later label.",
                    "The city fell in 1453 to Ottoman cannons.",
                ],
            },
            {
                "title": "Bread and Grain in Ancient Egypt",
                "kw": [
                    "ancient Egypt",
                    "the Nile flood",
                    "grain storage",
                    "the pharaoh",
                    "emmer wheat",
                    "scribes",
                ],
                "lines": [
                    "Everything depended on the Nile flood, too low and people starved.",
                    "Workers were paid in bread and beer, literally rations of emmer wheat.",
                    "Scribes tracked grain storage in huge state granaries.",
                    "The pyramid builders were paid laborers, not slaves, mostly.",
                    "A good flood was about {n:7-9} meters at the Nilometer in Aswan.",
                ],
            },
        ],
    },
    {
        "id": "pc-run",
        "name": "Negative Splits",
        "host": "Jess",
        "guests": ["Coach Darnell", "Aiko", "Sam", "Dr. Whitfield", "Lucia", "Ben"],
        "terms": [
            "the long run",
            "easy pace",
            "the training plan",
            "race day",
            "the watch",
            "your legs",
            "the track",
            "mileage",
            "a rest day",
            "heart rate",
            "the warmup",
            "your body",
        ],
        "sentences": [
            "I was running about {n:25-70} miles a week at the peak of that block.",
            "Most runners run their easy days too hard, full stop.",
            "Listen to {term}, it usually knows before your brain does.",
            "Consistency beats any single workout, stack the boring weeks.",
            "When I started with {kw} I was honestly terrible at it.",
            "My first marathon I went out way too fast and walked mile {n:18-23}.",
            "Don't change anything new on race day, shoes, food, nothing.",
            "A lot of people ask me about {kw} on Instagram.",
            "You should be able to hold a conversation on an easy run.",
            "Progress is like {n:5-10} percent more volume a week at most.",
        ],
        "topics": [
            {
                "title": "Building a Marathon Training Plan",
                "kw": [
                    "marathon training",
                    "the taper",
                    "tempo runs",
                    "long runs",
                    "weekly mileage",
                    "the peak week",
                ],
                "lines": [
                    "A marathon block is usually {n:16-20} weeks with a three week taper.",
                    "Long runs top out around twenty or twenty-two miles for most people.",
                    "Tempo runs are comfortably hard, you could say a few words, not sentences.",
                    "Cut weekly mileage about a third each week of the taper.",
                    "The peak week should feel hard but you shouldn't be limping.",
                ],
            },
            {
                "title": "Zone 2 and the Aerobic Base",
                "kw": [
                    "zone 2",
                    "the aerobic base",
                    "heart rate zones",
                    "mitochondria",
                    "lactate threshold",
                    "easy miles",
                ],
                "lines": [
                    "Zone 2 is roughly {n:60-70} percent of max heart rate for most people.",
                    "Easy miles build mitochondria and capillaries, the aerobic base.",
                    "Heart rate zones from a formula can be way off, do a field test.",
                    "Lactate threshold is the pace you could hold for about an hour.",
                    "Eighty percent easy, twenty percent hard is the classic split.",
                ],
            },
            {
                "title": "Shin Splints and Plantar Fasciitis",
                "kw": [
                    "running injuries",
                    "shin splints",
                    "plantar fasciitis",
                    "the physical therapist",
                    "calf raises",
                    "overuse",
                ],
                "lines": [
                    "Shin splints are usually too much too soon, it's an overuse thing.",
                    "Plantar fasciitis hurts most with those first steps in the morning.",
                    "Do calf raises, like {n:3-4} sets of fifteen, slow on the way down.",
                    "See a physical therapist before it turns into a stress fracture.",
                    "Pain that gets worse as you run means stop, not push through.",
                ],
            },
            {
                "title": "Fueling Long Runs and Race Day",
                "kw": [
                    "race nutrition",
                    "energy gels",
                    "carb loading",
                    "electrolytes",
                    "hitting the wall",
                    "glycogen",
                ],
                "lines": [
                    "Take an energy gel every {n:30-45} minutes, starting early.",
                    "Aim for {n:60-90} grams of carbs per hour if your gut can handle it.",
                    "Hitting the wall is basically running out of glycogen.",
                    "Carb loading is two or three days, not one giant pasta dinner.",
                    "Electrolytes matter more on hot days, you lose a lot of sodium.",
                ],
            },
            {
                "title": "Strength Training for Runners",
                "kw": [
                    "strength training",
                    "single-leg squats",
                    "the posterior chain",
                    "deadlifts",
                    "core work",
                    "plyometrics",
                ],
                "lines": [
                    "Two strength sessions a week, {n:30-45} minutes each, is plenty.",
                    "Single-leg squats expose every imbalance you've got.",
                    "Deadlifts build the posterior chain, glutes and hamstrings.",
                    "Plyometrics like box jumps improve running economy.",
                    "Core work isn't just crunches, think planks and carries.",
                ],
            },
            {
                "title": "Getting Into Trail Running",
                "kw": [
                    "trail running",
                    "elevation gain",
                    "power hiking",
                    "technical descents",
                    "trail shoes",
                    "the ultra",
                ],
                "lines": [
                    "On trails you run by effort, not pace, pace means nothing with elevation gain.",
                    "Power hiking the steep climbs is faster than shuffling up them.",
                    "Technical descents, look three steps ahead, not at your feet.",
                    "Trail shoes with lugs around {n:4-6} millimeters grip the mud.",
                    "My first ultra was a fifty K with {n:4000-9000} feet of climbing.",
                ],
            },
            {
                "title": "Choosing Running Shoes",
                "kw": [
                    "running shoes",
                    "heel drop",
                    "carbon plates",
                    "stack height",
                    "the gait analysis",
                    "shoe rotation",
                ],
                "lines": [
                    "Carbon plate shoes really do save a few percent in running economy.",
                    "Heel drop is the height difference heel to toe, usually {n:0-12} millimeters.",
                    "Shoes last maybe {n:300-500} miles before the foam goes dead.",
                    "A shoe rotation of two or three pairs spreads out the stress.",
                    "Buy for comfort first, the fancy gait analysis is kind of overrated.",
                ],
            },
            {
                "title": "Sleep, Recovery and Rest Days",
                "kw": [
                    "recovery",
                    "sleep",
                    "heart rate variability",
                    "overtraining",
                    "deload weeks",
                    "foam rolling",
                ],
                "lines": [
                    "Sleep is the best recovery tool and it's free, aim for {n:8-9} hours.",
                    "Heart rate variability dropping for days can be an overtraining sign.",
                    "Take a deload week every third or fourth week.",
                    "Foam rolling feels good, the science is mixed, but it feels good.",
                    "A rest day is part of the training, not a break from it.",
                ],
            },
        ],
    },
]

# Generic conversational material shared by every podcast.
GENERIC_LINES = [
    "And that's where {kw} comes in, right?",
    "I think the biggest misconception about {kw} is that it's complicated.",
    "So walk me through how you actually think about {kw}.",
    "Can you say more about {kw2}? Because I think listeners get confused there.",
    "There's {kw}, and then there's {kw2}, and they're related but not the same.",
    "I remember the first time I really understood {kw}, it clicked all at once.",
    "People always ask me whether {kw} is worth it, and I say it depends.",
    "It took me like {n:2-10} years to get comfortable with {kw}.",
    "Okay, so, quick tangent, but it's about {kw2}.",
    "If you only remember one thing from this episode, make it {kw}.",
    "We had a listener write in about {kw2}, and it was a great question.",
    "The short version is, {kw} rewards patience.",
    "What's the mistake you see beginners make with {kw}?",
    "How much of this is about {kw2} versus just practice?",
    "Where do you even start with {kw}?",
    "Is {kw} something people can do on their own, or do they need help?",
    "What would you tell someone who tried {kw} and gave up?",
    "That's such a good point, I hadn't thought about it that way.",
    "I want to push back on that a little bit, actually.",
    "Let's come back to that after the break.",
    "We'll put a link in the show notes for that.",
    "There's a study, I think from about {n:2008-2023}, that looked at this.",
    "I'm probably oversimplifying, but that's the gist.",
    "Roughly {n:2-9} out of ten people get this wrong the first time.",
]

QUESTION_LINES = [
    "So what's the first thing you'd tell someone new to {kw}?",
    "How did you get into {kw} in the first place?",
    "Wait, so how does {kw2} fit into that?",
    "Okay, what about {kw}? Where does that come in?",
    "Is there a wrong way to do {kw}?",
    "Why do you think people struggle with {kw2}?",
    "What changed your mind about {kw}?",
    "Can you give me a concrete example?",
    "How long does that usually take?",
    "And what does that cost, roughly?",
]

BACKCHANNELS = [
    "Right.",
    "Yeah.",
    "Mm-hmm.",
    "Totally.",
    "Oh, interesting.",
    "Sure.",
    "Wow.",
    "Yeah, yeah.",
    "Exactly.",
    "Huh.",
    "Okay.",
    "No, totally.",
    "Right, right.",
]

OPENERS = [
    "So ",
    "I mean, ",
    "You know, ",
    "Yeah, and ",
    "Okay so ",
    "Well, ",
    "Honestly, ",
    "And ",
    "But ",
    "Right, so ",
    "Look, ",
    "Um, ",
    "Yeah, ",
]

MID_FILLERS = ["you know,", "like,", "I mean,", "basically,", "honestly,", "right,"]
HESITATIONS = ["uh,", "um,", "uh", "like,"]

INTRO_LINES = [
    "Hey everybody, welcome back to {podcast}. I'm {host}, and today we're talking about "
    "{title}. I'm here with {guest}. {guest}, thanks for coming on.",
    "Welcome to {podcast}, I'm your host {host}. This episode is all about {title}, and my guest is {guest}.",
    "Hi, hello, this is {podcast}, I'm {host}. Today, {title}, which is a topic you all have "
    "been asking about forever. Joining me is {guest}.",
]

INTRO_REPLIES = [
    "Thanks for having me, I'm excited, I've listened for a long time.",
    "Yeah, happy to be here. This is one of my favorite things to talk about.",
    "Thanks {host}, it's great to finally do this.",
]

OUTRO_LINES = [
    "That's all for this episode of {podcast}. Thanks {guest}, this was great. See you next week.",
    "Okay, we're out of time. {guest}, where can people find you? Great. Thanks everyone for "
    "listening to {podcast}.",
    "Alright, that's a wrap. If you liked this one, tell a friend. I'm {host}, this has been {podcast}.",
]

_TITLES = frozenset({"Dr.", "Coach", "Professor"})
_NUM_SLOT = re.compile(r"\{n:(\d+)-(\d+)\}")


def _fill(
    template: str,
    rng: random.Random,
    ctx: dict[str, str],
    topic: dict[str, Any],
    podcast: dict[str, Any],
) -> str:
    """Fill the slots of one template sentence with context, keywords and numbers."""
    if "{" not in template:
        return template
    kws = topic["kw"]
    i = rng.randrange(len(kws))
    j = (i + rng.randrange(1, len(kws))) % len(kws)  # a different keyword
    text = _NUM_SLOT.sub(lambda m: str(rng.randint(int(m.group(1)), int(m.group(2)))), template)
    values = {**ctx, "kw": kws[i], "kw2": kws[j], "term": rng.choice(podcast["terms"])}
    for key, val in values.items():
        text = text.replace("{" + key + "}", val)
    return text


def _lower_first(s: str) -> str:
    """Lower-case the first letter after a prepended opener, unless it starts a name or "I"."""
    first = s.split(" ", 1)[0].rstrip(",.?!")
    if first in _KEEP_CAPITALIZED or first.split("'")[0] in _KEEP_CAPITALIZED:
        return s
    return s[:1].lower() + s[1:]


# Sentence-initial words that stay capitalized: the pronoun I and proper nouns.
_KEEP_CAPITALIZED = frozenset(
    {
        "I", "I'm", "I've", "I'd", "I'll", "Constantinople", "Greek", "Gutenberg", "Harrison",
        "Hawking", "Henrietta", "Justinian", "Roman", "Samarkand", "Venice", "Cepheids",
    }
)  # fmt: skip


def _sentence(
    rng: random.Random,
    template: str,
    ctx: dict[str, str],
    topic: dict[str, Any],
    podcast: dict[str, Any],
) -> str:
    """Turn a template into a spoken-style sentence with optional opener and filler."""
    s = _fill(template, rng, ctx, topic, podcast)
    if rng.random() < 0.35:
        s = rng.choice(OPENERS) + _lower_first(s)
    if rng.random() < 0.25:
        words = s.split(" ")
        # Discourse fillers go after a comma; hesitations ("uh,", "um,") go anywhere.
        after_comma = [k + 1 for k, w in enumerate(words[:-1]) if w.endswith(",")]
        if after_comma and rng.random() < 0.7:
            words.insert(rng.choice(after_comma), rng.choice(MID_FILLERS))
        elif len(words) > 6:
            words.insert(rng.randint(2, len(words) - 3), rng.choice(HESITATIONS))
        s = " ".join(words)
    return s


def _target_words(rng: random.Random) -> int:
    """Draw a chunk length in words with a realistic skew (mostly 80-200)."""
    r = rng.random()
    if r < 0.10:
        return rng.randint(10, 30)
    if r < 0.20:
        return rng.randint(31, 79)
    if r < 0.80:
        return int(min(200, max(80, rng.gauss(135, 35))))
    if r < 0.92:
        return rng.randint(201, 299)
    return rng.randint(300, 400)


def _turn(
    rng: random.Random,
    speaker: str,
    is_host: bool,
    ctx: dict[str, str],
    topic: dict[str, Any],
    podcast: dict[str, Any],
) -> str:
    """Produce one speaker turn: a few sentences of topical or conversational speech."""
    sentences: list[str] = []
    if is_host and rng.random() < 0.5:
        if rng.random() < 0.4:
            sentences.append(rng.choice(BACKCHANNELS))
        sentences.append(_sentence(rng, rng.choice(QUESTION_LINES), ctx, topic, podcast))
    else:
        if rng.random() < 0.3:
            sentences.append(rng.choice(BACKCHANNELS))
        for _ in range(rng.randint(1, 5)):
            pool_pick = rng.random()
            if pool_pick < 0.5:
                template = rng.choice(topic["lines"])
            elif pool_pick < 0.75:
                template = rng.choice(podcast["sentences"])
            else:
                template = rng.choice(GENERIC_LINES)
            sentences.append(_sentence(rng, template, ctx, topic, podcast))
    return f"{speaker}: " + " ".join(sentences)


def _episode_topic(podcast: dict[str, Any], order: list[int], ep: int) -> tuple[dict, str]:
    """Return the topic dict and display title for 0-based episode number ``ep``."""
    topic = podcast["topics"][order[ep % len(order)]]
    cycle = ep // len(order)
    title = topic["title"] if cycle == 0 else f"{topic['title']}, Part {cycle + 1}"
    return topic, title


def _episode_rows(
    rng: random.Random,
    podcast: dict[str, Any],
    ep: int,
    title: str,
    topic: dict[str, Any],
    published_at: datetime,
    max_chunks: int | None = None,
    ep_width: int = 2,
) -> list[dict[str, Any]]:
    """Generate all chunk rows of one episode (optionally capped at ``max_chunks``).

    ``ep_width`` zero-pads the episode number so ids sort lexicographically.
    """
    episode_id = f"{podcast['id']}-ep{ep + 1:0{ep_width}d}"
    guest = rng.choice(podcast["guests"])
    host = podcast["host"]
    ctx = {"podcast": podcast["name"], "host": host, "guest": guest, "title": title}
    n_chunks = rng.randint(20, 35)
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    wpm = WORDS_PER_MINUTE * rng.uniform(0.88, 1.12)
    t = round(rng.uniform(0.0, 25.0), 3)  # cold open / music before speech
    speaker_is_host = True
    rows: list[dict[str, Any]] = []
    for idx in range(n_chunks):
        target = _target_words(rng)
        parts: list[str] = []
        if idx == 0:
            parts.append(f"{host}: " + _fill(rng.choice(INTRO_LINES), rng, ctx, topic, podcast))
            parts.append(f"{guest}: " + _fill(rng.choice(INTRO_REPLIES), rng, ctx, topic, podcast))
            speaker_is_host = True
        words = sum(len(p.split()) for p in parts)
        while words < target:
            speaker = host if speaker_is_host else guest
            part = _turn(rng, speaker, speaker_is_host, ctx, topic, podcast)
            parts.append(part)
            words += len(part.split())
            speaker_is_host = not speaker_is_host if rng.random() < 0.8 else speaker_is_host
        if idx == n_chunks - 1 and n_chunks > 1:
            parts.append(f"{host}: " + _fill(rng.choice(OUTRO_LINES), rng, ctx, topic, podcast))
        tokens = " ".join(parts).split()
        # Fixed-window chunkers cut mid-sentence; trim overshoot to the drawn length.
        cap = max(target, 10) if idx not in (0, n_chunks - 1) else 400
        tokens = tokens[: min(cap, 400)]
        # Don't end a window on a dangling speaker label ("... Carla:").
        while len(tokens) > 10 and (tokens[-1].endswith(":") or tokens[-1] in _TITLES):
            tokens.pop()
        text = " ".join(tokens)
        duration = len(tokens) / wpm * 60.0 * rng.uniform(0.95, 1.05)
        start = t
        end = round(start + max(duration, 1.0), 3)
        rows.append(
            {
                "chunk_id": f"{episode_id}-c{idx:04d}",
                "episode_id": episode_id,
                "podcast_id": podcast["id"],
                "chunk_index": idx,
                "start_s": start,
                "end_s": end,
                "published_at": published_at,
                "text": text,
            }
        )
        t = end
    return rows


def _publish_times(rng: random.Random, n_episodes: int) -> list[datetime]:
    """Spread ``n_episodes`` publication times over 2025-2026, ascending, whole seconds."""
    span = (DATE_END - DATE_START).total_seconds()
    step = span / max(n_episodes, 1)
    offset = rng.uniform(0, step * 0.5)
    out = []
    for i in range(n_episodes):
        base = DATE_START + timedelta(seconds=offset + i * step + rng.uniform(0, step * 0.4))
        day = base.replace(hour=0, minute=0, second=0, microsecond=0)
        out.append(day + timedelta(hours=rng.randint(4, 16), minutes=rng.choice([0, 15, 30, 45])))
    return out


def _select_podcasts(podcasts: int) -> list[dict[str, Any]]:
    """Pick the first ``podcasts`` podcasts, returned sorted by ``podcast_id``."""
    if not 1 <= podcasts <= len(PODCASTS):
        raise ValueError(f"podcasts must be in 1..{len(PODCASTS)}, got {podcasts}")
    return sorted(PODCASTS[:podcasts], key=lambda p: p["id"])


def generate_chunks(
    seed: int = DEFAULT_SEED,
    podcasts: int = DEFAULT_PODCASTS,
    episodes_per_podcast: int = DEFAULT_EPISODES_PER_PODCAST,
) -> list[dict[str, Any]]:
    """Generate chunk rows (dicts matching :data:`SCHEMA`) ordered by podcast/episode/chunk.

    Deterministic for a given ``(seed, podcasts, episodes_per_podcast)``.
    """
    if episodes_per_podcast < 1:
        raise ValueError("episodes_per_podcast must be >= 1")
    rng = random.Random(seed)
    ep_width = max(2, len(str(episodes_per_podcast)))
    rows: list[dict[str, Any]] = []
    for podcast in _select_podcasts(podcasts):
        order = list(range(len(podcast["topics"])))
        rng.shuffle(order)
        dates = _publish_times(rng, episodes_per_podcast)
        for ep in range(episodes_per_podcast):
            topic, title = _episode_topic(podcast, order, ep)
            rows.extend(_episode_rows(rng, podcast, ep, title, topic, dates[ep], ep_width=ep_width))
    return rows


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Convert generated rows to an Arrow table with the exact :data:`SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_parquet(rows: list[dict[str, Any]] | pa.Table, path: str | Path) -> Path:
    """Write rows deterministically as zstd Parquet with ``ROW_GROUP_SIZE`` row groups."""
    table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        compression_level=9,
        use_dictionary=["episode_id", "podcast_id"],
        write_statistics=True,
        data_page_version="1.0",
        version="2.6",
    )
    return path


def make_large(
    n_chunks: int, seed: int = DEFAULT_SEED, batch_rows: int = LARGE_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Yield exactly ``n_chunks`` rows as record batches of ``batch_rows`` rows (last smaller).

    Uses all podcasts with as many episodes as needed (topics recycled as "Part N"),
    generated one episode at a time so memory stays flat. Rows are ordered by podcast,
    episode, chunk_index (ids zero-padded so they also sort lexically); the last episode
    of each podcast may be truncated to hit ``n_chunks`` exactly. Deterministic per seed.
    """
    if n_chunks < 0:
        raise ValueError("n_chunks must be >= 0")
    rng = random.Random(seed)
    podcasts = _select_podcasts(len(PODCASTS))
    n_pod = len(podcasts)
    quotas = [n_chunks // n_pod + (1 if i < n_chunks % n_pod else 0) for i in range(n_pod)]
    # Episodes never outnumber chunks, so this width keeps episode ids lexically sorted.
    ep_width = max(2, len(str(max(quotas))))
    buf: list[dict[str, Any]] = []
    for podcast, quota in zip(podcasts, quotas, strict=True):
        order = list(range(len(podcast["topics"])))
        rng.shuffle(order)
        est_eps = max(1, math.ceil(quota / 27.5))
        dates = _publish_times(rng, est_eps)
        step = (DATE_END - DATE_START) / est_eps
        produced = 0
        ep = 0
        while produced < quota:
            date = dates[ep] if ep < len(dates) else dates[-1] + step * (ep - len(dates) + 1)
            topic, title = _episode_topic(podcast, order, ep)
            rows = _episode_rows(rng, podcast, ep, title, topic, date, quota - produced, ep_width=ep_width)
            produced += len(rows)
            buf.extend(rows)
            ep += 1
            while len(buf) >= batch_rows:
                yield pa.RecordBatch.from_pylist(buf[:batch_rows], schema=SCHEMA)
                del buf[:batch_rows]
    if buf:
        yield pa.RecordBatch.from_pylist(buf, schema=SCHEMA)


def _sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: generate the sample and print a summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output Parquet path")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--podcasts", type=int, default=DEFAULT_PODCASTS)
    p.add_argument("--episodes-per-podcast", type=int, default=DEFAULT_EPISODES_PER_PODCAST)
    args = p.parse_args(argv)

    rows = generate_chunks(args.seed, args.podcasts, args.episodes_per_podcast)
    path = write_parquet(rows, args.out)
    wc = [len(r["text"].split()) for r in rows]
    eps = {r["episode_id"] for r in rows}
    pods = {r["podcast_id"] for r in rows}
    dates = sorted({r["published_at"] for r in rows})
    meta = pq.ParquetFile(path).metadata
    print(
        f"wrote {path}: {len(rows)} chunks, {len(eps)} episodes, {len(pods)} podcasts, "
        f"{meta.num_row_groups} row groups, {path.stat().st_size} bytes"
    )
    print(
        f"words/chunk: min={min(wc)} median={statistics.median(wc):g} max={max(wc)} "
        f"(<=30: {sum(w <= 30 for w in wc)}, 80-200: {sum(80 <= w <= 200 for w in wc)}, "
        f">=300: {sum(w >= 300 for w in wc)})"
    )
    print(f"published_at: {dates[0].isoformat()} .. {dates[-1].isoformat()}")
    print(f"sha256: {_sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
