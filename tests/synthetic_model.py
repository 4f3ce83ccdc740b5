"""Offline stand-ins for hkunlp/instructor-xl: the same layout, random weights.

The Hugging Face hub is unreachable where podembed is built and tested, and no
package ships T5 or INSTRUCTOR weights. This module builds, with no network, a
sentence-transformers model laid out like ``hkunlp/instructor-xl``::

    Transformer (T5EncoderModel) -> Pooling(mean) -> Dense(d_model -> out_dim,
    no bias, identity) -> Normalize

with a T5-style SentencePiece unigram tokenizer (``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, 100 ``<extra_id_N>`` sentinels, ``</s>`` appended, 512-token
limit) trained on a built-in corpus of spoken English, so that common words are
one token and rare words split into pieces, as with the real T5 vocabulary.

The weights are random, so the vectors mean nothing; shapes, dtypes, memory,
FLOPs, sequence lengths and the INSTRUCTOR prompt handling
(``set_pooling_include_prompt``) behave like the real model. Use :data:`TINY`
with :func:`build_model` for tests (builds in about a second) and
:data:`INSTRUCTOR_XL` with :func:`build_in_memory` for throughput benchmarks.

Like the files on the hub, the saved Pooling layer keeps ``include_prompt=True``
by default: callers must call ``model.set_pooling_include_prompt(False)``, as
they must for the real model loaded from a local path.

torch, transformers and sentence-transformers are imported lazily (seconds of CPU), so
importing this module is cheap. ``dtype`` arguments take a ``torch.dtype`` or its name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel

__all__ = [
    "EXTRA_IDS",
    "INSTRUCTOR_XL",
    "MARKER_FILE",
    "MAX_SEQ_LENGTH",
    "TINY",
    "T5Shape",
    "build_in_memory",
    "build_model",
    "build_tokenizer",
    "corpus",
    "is_complete",
    "t5_config",
]

MARKER_FILE = "podembed_synthetic.json"
"""Marker written last into a finished model directory (what :func:`build_model` caches on)."""

FORMAT_VERSION = 1
"""Bump whenever the layout, the corpus or the initialisation changes (invalidates caches)."""

EXTRA_IDS = 100
"""Number of ``<extra_id_N>`` sentinel tokens, as in every T5 tokenizer."""

MAX_TRAINED_PIECES = 8000
"""Upper bound on the SentencePiece vocabulary trained.

The real T5 vocabulary has 32,000 pieces; the built-in corpus supports about 4,500, so
:data:`INSTRUCTOR_XL` gets that many trained pieces and an embedding matrix sized to
``T5Shape.vocab_size`` regardless (speed does not depend on unused rows)."""

MAX_SEQ_LENGTH = 512
"""INSTRUCTOR's hard-coded maximum sequence length, stored as ``model_max_length``."""

_CORPUS_SEED = 1234


@dataclass(frozen=True)
class T5Shape:
    """Architecture of a T5 encoder plus Dense head, as in a sentence-transformers T5 model.

    Attributes:
        d_model: Hidden size of the encoder.
        num_layers: Number of encoder blocks.
        num_heads: Attention heads per block.
        d_kv: Size of each attention head (``num_heads * d_kv`` need not equal ``d_model``).
        d_ff: Inner size of the feed-forward block.
        vocab_size: Rows of the token embedding matrix (T5 pads its 32,100 tokens to 32,128).
        out_dim: Output size of the Dense layer: the embedding dimension.
        feed_forward_proj: ``"gated-gelu"`` (T5 v1.1, GTR, INSTRUCTOR) or ``"relu"`` (T5 v1.0).
    """

    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    vocab_size: int
    out_dim: int
    feed_forward_proj: str = "gated-gelu"

    def encoder_parameters(self) -> int:
        """Number of parameters of the T5 encoder (token embeddings included)."""
        inner = self.num_heads * self.d_kv
        attention = 4 * self.d_model * inner
        ff_matrices = 3 if self.feed_forward_proj.startswith("gated") else 2
        per_layer = attention + ff_matrices * self.d_model * self.d_ff + 2 * self.d_model
        relative_bias = 32 * self.num_heads  # first block only, 32 buckets
        final_norm = self.d_model
        return self.vocab_size * self.d_model + self.num_layers * per_layer + relative_bias + final_norm


INSTRUCTOR_XL = T5Shape(
    d_model=2048,
    num_layers=24,
    num_heads=32,
    d_kv=64,
    d_ff=5120,
    vocab_size=32128,
    out_dim=768,
    feed_forward_proj="gated-gelu",
)
"""hkunlp/instructor-xl: the encoder of GTR-T5-XL (a T5 v1.1 XL, gated-GELU feed-forward),
1,223,527,424 encoder parameters (4.9 GB in fp32), mean pooling, Dense 2048 -> 768 without bias."""

TINY = T5Shape(
    d_model=64,
    num_layers=2,
    num_heads=4,
    d_kv=16,
    d_ff=128,
    vocab_size=4096,
    out_dim=32,
    feed_forward_proj="gated-gelu",
)
"""The same layout in miniature (0.35 M parameters, 3,996 trained pieces), for fast tests."""


def _tokenizer_pieces(vocab_size: int) -> int:
    pieces = min(vocab_size - EXTRA_IDS, MAX_TRAINED_PIECES)
    if pieces < 128:
        raise ValueError(f"vocab_size {vocab_size} is too small: needs at least {EXTRA_IDS + 128}")
    return pieces


def t5_config(shape: T5Shape) -> T5Config:
    """Return the ``transformers.T5Config`` of ``shape``'s encoder, as instructor-xl ships it.

    Args:
        shape: The architecture.

    Returns:
        A config whose ``architectures`` is ``["T5EncoderModel"]`` (what sentence-transformers
        loads), with the T5 special ids (pad 0, eos 1) and no KV cache.
    """
    from transformers import T5Config

    return T5Config(
        vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        d_kv=shape.d_kv,
        d_ff=shape.d_ff,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_layers,
        num_heads=shape.num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        initializer_factor=1.0,
        feed_forward_proj=shape.feed_forward_proj,
        is_encoder_decoder=True,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
        architectures=["T5EncoderModel"],
    )


# --------------------------------------------------------------------------- corpus

# About 2,500 English words: the most common spoken words roughly by frequency, then a wider
# vocabulary (news, business, tech, sport, culture, names). Rank drives the sampling weights.
_WORDS = """
the of and to a in is that it for you was with on as have but be they at this he not are by
from we or his had I one all what there can an were your which their when she if said do
will each about how up out them then many some so these would other into has her more him go
see no could my than been who its now people did get come made may over down only way use
like just time know take year good look think also back after two our work first well even
new want because any give day most us man thing say tell very through long where much should
great old still own under last never same another while right too help kind life place
before here why left home around end found three part small live something four put big next
always important world often together really house point hand high few might school let
group begin seem country talk turn start show hear play run move night keep different story
family feel leave mean need become thought book question job money power city state company
system program number market problem government business water side week month case fact
area eye head service friend father mother student word says saying went gone going goes got
getting gets make making makes knew known knowing thinking took taken taking saw seen seeing
came coming wanted wanting looked looking used using find finding gave given giving told
telling worked working call called calling try tried trying ask asked asking needed felt
feeling became meant kept began seemed helped talked talking turned started starting showed
shown heard played playing ran running moved moving liked lived living believe believed hold
held bring brought happen happened happening write wrote written writing provide sit sat
stand stood lose lost pay paid meet met include included continue continued set learn
learned learning change changed lead led understand understood watch watched follow followed
stop stopped create created speak spoke spoken read spend spent grow grew grown open opened
walk walked win won offer offered remember remembered love loved consider considered appear
appeared buy bought wait waited serve served die died send sent expect expected build built
stay stayed fall fell cut reach reached kill killed remain remained suggest suggested raise
raised pass passed sell sold require required report reported decide decided pull pulled
explain explained hope hoped develop developed carry carried break broke agree agreed
support supported hit produce produced eat ate cover covered catch caught draw drew choose
chose wonder wondered figure figured realize realized imagine imagined person woman child
children kid kids guy guys friends parents mom dad brother sister son daughter husband wife
boyfriend girlfriend partner boss team teammates coach player players fan fans audience
listener listeners host guest guests producer editor author writer reader teacher doctor
nurse patient lawyer judge police officer soldier president senator politician voter citizen
neighbor stranger founder CEO engineer developer designer scientist researcher artist
musician singer actor director comedian athlete customer client user years days weeks months
hour hours minute minutes second seconds moment morning afternoon evening today tomorrow
yesterday weekend summer winter spring season decade century future past history beginning
middle things stuff ways town room door car road street college university office dollar
dollars price cost deal economy industry bank tax taxes health care hospital medicine
disease drug drugs food coffee beer wine dinner lunch breakfast restaurant kitchen music
song songs album band shows episode episodes podcast series movie movies film TV television
news media internet website app phone computer software technology data science research
study studies theory idea ideas questions answer problems issue issues reason reasons
example facts truth lie stories books game games sport sports football basketball baseball
soccer league championship loss record goal goals score rule rules law laws policy election
vote campaign party war peace army culture society community church religion god faith art
language words name numbers percent level sort type lot bit piece process project plan
strategy product products experience skill skills energy force pressure risk chance
opportunity choice decision mistake mistakes lesson lessons habit habits relationship
conversation interview meeting conference event trip travel vacation weather climate planet
nature animal animals dog cat dogs cats body brain heart mind eyes face hands voice feelings
emotion anxiety stress sleep exercise diet weight bad best better worse worst large little
short low young early late hard easy real true false wrong main major local national
international global public private social political economic financial personal human
natural physical mental whole full free close sure clear certain possible impossible likely
able available special simple complex complicated interesting amazing awesome incredible
terrible horrible weird strange funny crazy wild cool nice beautiful ugly happy sad angry
afraid scared excited tired busy rich poor cheap expensive strong weak fast slow hot cold
warm safe dangerous healthy sick serious successful popular famous actually basically
literally honestly definitely probably totally completely obviously clearly seriously
exactly absolutely certainly quickly slowly finally already sometimes usually maybe perhaps
almost nearly pretty quite rather again ever yet once twice instead anyway though although
however therefore otherwise meanwhile later soon recently currently especially particularly
generally specifically eventually suddenly immediately simply truly fully above across
against along among behind below beneath beside between beyond during except inside near off
onto outside since throughout toward towards until upon within without me mine myself yours
yourself himself hers herself itself ours ourselves theirs themselves those whom whose
whatever whoever everyone everybody everything someone somebody anyone anybody anything
nobody nothing none every either neither both less least several enough nor unless whereas
whether whenever wherever um uh yeah yes okay ok oh wow hey hmm mhm gotcha alright don't
doesn't didn't can't couldn't won't wouldn't shouldn't isn't aren't wasn't weren't haven't
hasn't hadn't I'm I've I'll I'd you're you've you'll you'd he's she's it's we're we've we'll
they're they've they'll that's there's here's what's who's let's gonna wanna gotta kinda
sorta
represent represents representing representation transcript transcripts retrieval retrieve
retrieving retrieved supporting document documents query queries passage passages sentence
sentences paragraph summary summarize classify classification cluster clustering similar
similarity relevant relevance domain task instruction instructions text title article
articles ability academic accept accepted access accident according account accounts achieve
achieved acknowledge act action actions active activity actors actual adapt add added adding
addition additional address administration admit adult advance advantage adventure
advertising advice affect affected afford age agency agenda agent agents aggressive ago
agreement ahead aid aim air airline airport alcohol alive allow allowed allowing alone
alternative ambition amount analysis analyst analyze ancient anger angle announce announced
annual apartment apparently appeal appearance application applications apply appreciate
approach approve argue argument arm arms arrive arrived artists aside aspect assume attack
attempt attend attention attitude attorney attract authority average avoid award aware
awareness background balance ball ban banks bar base based basic basis battle beach bear
beat beauty bed behavior belief benefit benefits bet bias bill billion billions biology
birth birthday black blame blind block blog blood blue board boat born borrow bottle bottom
boundary box brand brands bread breaking breath bridge brief bright brilliant broad broken
brown budget bug building buildings bunch burn bus buying cable calendar camera camp campus
cancer candidate capable capacity capital capture card cards career careful carefully cash
cast category cause caused celebrate cell center central chain chair chairman challenge
challenges champion channel chapter character characters charge charity chart chat check
chemical chicken chief childhood chip chips circle citizens civil claim claims class classes
classic clean climb clinic clock closed cloud club clue code collapse colleague colleagues
collect collection color column combination comedy comfortable command comment comments
commercial commission commit commitment committee common communication compare comparison
compete competition competitive complain complete concept concern concerned concert
conclusion condition conditions confidence confident conflict confused congress connect
connected connection conscious consequence conservative consistent constant constantly
construction consumer consumers contact content contest context contract contrast contribute
control controversial convince cook cookie cooking copy core corner corporate correct costs
couch count counter couple courage course court cousin crash creative credit crew crime
criminal crisis critic critical criticism crowd cry cultural cup curious current cycle daily
damage dance danger dark database date dating dead deadline dealing death debate debt
decades decent decisions deep deeply defense define degree delay deliver delivery demand
democracy democrat democrats depend depends depression describe description desert deserve
design designed desire desk despite destroy detail details detect determine device devices
difference difficult digital direct direction directly dirty disagree disaster discover
discovery discuss discussed discussion discussing display distance district dive divide
documentary domestic double doubt downtown dozen draft drama dream dreams dress drink drive
driver driving drop dry due earn earth easily east economics edge edit edition education
effect effective effort efforts eight elected electric electricity element elite else email
emergency emotional emphasis employee employees employer empty encourage enemy engage engine
engineering enjoy enormous ensure enter entertainment entire entirely environment
environmental equal equipment error escape essay essentially establish estate estimate
ethical evaluate events evidence evil evolution exact examine excellent exchange exciting
excuse executive exist existence expand expansion experiment expert experts explore exposure
express extend extra extreme extremely facility factor factors factory fail failed failure
fair fake familiar fantastic far farm farmer fashion fat fault favor favorite fear feature
features federal fee feedback female fiction field fight fighting file files fill final
finance fine finger finish fire firm fish fit five fix flag flat flavor flight floor flow
fly focus folks foot foreign forest forever forget forgot form formal format former forward
foundation frame framework frankly freedom frequently fresh friendly front fuel fun function
fund funding funds furniture gain gallery gap garage garden gas gate gather gear gender
general generation generous genius gentle genuine gift girl glad glass gold golf gorgeous
governor grab grade grand grandfather grandmother grant graph grass grateful gray green
grocery ground growth guarantee guard guess guide guilty gun hair half hall handle hang harm
hearing heat heavy height hell hello hero hide highly hill hire historical hobby hole
holiday honest honor horse hotel household housing huge humor hundred hungry hunt hurt ice
identify identity ignore illegal illness image images immigrant immigration impact implement
imply importance impress impression improve improvement incentive incident income increase
increased increasingly incredibly independent index indicate individual individuals
inflation influence inform information initial injury inner innocent input insight insist
inspire instance institution insurance intelligence intelligent intend intense intention
interest interested interests internal introduce invest investment investor invite involve
involved island item items jail joke journal journalist journey joy judgment jump junior
jury justice key kick king knee knowledge lab label labor lack lady lake land landscape
laptop largely laugh launch lay layer leader leaders leadership lecture legal legend
legislation length letter liberal library license lifestyle light limit limited line link
list listen literature loan location lock logic lonely loose lots loud lovely luck lucky
machine machines magazine magic mail mainly maintain majority male manage management manager
map mark marketing marriage married mass massive master match material materials math matter
matters maximum mayor meal meaning measure meat mechanism medical medium member members
memory mention mentioned mess message metal method military milk million millions minister
minor minority miss mission mix mobile model models moderate modern moments monitor mood
moral mortgage mostly motion motivation mountain mouth movement multiple murder muscle
museum mystery narrative nation native naturally nearby necessarily necessary neck negative
negotiate nerve nervous network neutral newspaper normal normally north nose note notice
notion novel nowhere nuclear object objective obligation observe obtain obvious occasion
occur ocean odd offense offensive official officials oil online operate operation opinion
opponent opposite option options order ordinary organization organize origin original
outcome overall owner pace pack package page pain paint painting pair panel panic paper
parent park parking participate particular partly passion passionate password path pattern
pause peak per perfect perfectly perform performance period permission permit perspective
phase philosophy photo phrase pick picture pie pilot pitch plane plant plastic plate
platform pleasure plenty plot pocket poem poet poetry politics poll pool pop population
position positive possibility post potential potentially poverty practical practice pray
prayer predict prefer pregnant prepare present presentation preserve press pretend prevent
previous pride priest primary prime prince principle print prior priority prison privacy
prize procedure proceed production profession professional professor profile profit progress
promise promote proof proper properly property proposal propose protect protection protest
proud prove provider psychology punch purchase pure purpose push quality quarter queen quick
quiet quit quote race racism radio rain range rank rare rarely rate rates rating reaction
reading ready reality reasonable recall receive recent recipe recognize recommend recover
recovery reduce reference reflect reform refuse regard region regular regulation regulations
reject relate related relation relatively release relief religious rely remarkable remote
remove rent repeat replace reply reporter republican reputation request rescue resident
resist resolve resource resources respect respond response responsibility responsible rest
result retire retirement return reveal revenue review revolution reward ride ring rise river
robot rock role roll romantic roof root rough round route routine row royal rural rush
safety salary sale sales salt sample satisfy save saving scale scandal scene schedule
scholar screen script sea search seat secret secretary section sector secure security seek
select selection self senior sense sensitive separate sequence session setting settle seven
severe sex shake shape share sharp shift shock shoot shop shopping shot shoulder shout sight
sign signal significant silence silly silver sing single site situation size skin sky slide
slightly smart smell smile smoke snow soft soil solar solid solution solve somehow somewhere
sorry soul sound source south space speaker speaking specific speech speed spirit split
sponsor spot spread square stable staff stage stake standard star stare statement station
status steal step stick stock stomach stone store storm straight stream strength stretch
strike string structure struggle studio style subject submit success suffer sugar suit sun
super supply suppose surface surgery surprise surprised survey survive suspect sweet swim
switch symbol table tackle talent target taste teach teaching tear technical technique
teenager telephone temperature tend tension term terms test testing thank thanks theater
theme therapy thick thin threat throw ticket tiny tip tone tool tools tooth top topic topics
total touch tough tour tourist track trade tradition traditional traffic tragedy train
training transfer transition transport trauma treat treatment tree trend trial trick trouble
truck trust tune twelve twenty typical typically ultimately uncle understanding unemployment
union unique unit universe unknown unusual upset urban urge usual vaccine valley valuable
value variety various vehicle version veteran victim video view viewer village violence
violent virus visible vision visit visitor vital volume volunteer wage wake wall warn
warning wash waste wave wealth weapon wear web wedding weekly welcome west western wheel
wide willing wind window wing winner wise wish witness wonderful wood worker workers
workshop worried worry worth yard yellow yield youth zone Monday Tuesday Wednesday Thursday
Friday Saturday Sunday January February March April May June July August September October
November December America American Americans Europe European China Chinese Japan India
Africa Canada Mexico Russia Ukraine Germany France England British London Paris California
Texas Florida Chicago Boston Washington Ohio Google Apple Amazon Microsoft Facebook Twitter
YouTube Netflix Spotify Instagram TikTok Tesla Elon Musk Trump Biden Obama Congress Senate
"""


def _phrases(text: str) -> tuple[str, ...]:
    """Split a ``|``-separated block of phrases (kept as text so formatters leave it alone)."""
    return tuple(" ".join(part.split()) for part in text.split("|"))


_OPENERS = _phrases(
    """
    So | And | But | Yeah | Well | Okay | Right | Now | Then | Honestly | Actually | Look |
    Listen | I mean | You know | Anyway | Because | And so | The thing is | What happened was |
    Here's the thing | To be honest | Welcome back to the show | Thanks for having me | Before
    we get started | Hi everyone | Welcome to the podcast
    """
)
_SUBJECTS = _phrases(
    """
    I | we | you | they | he | she | people | my wife | my husband | our guest | the audience |
    a lot of folks | everybody | my co-host | the team | most listeners | our producer | my dad
    | my mom | the founder | the researchers | the government | the company | scientists |
    investors | teachers | doctors | the coach | my friend Sarah | John | Michael | Emily |
    David | Jessica | Chris | Alex
    """
)
_PREDICATES = _phrases(
    """
    think | know | believe | feel | guess | remember | said | told me | realized | found out |
    figured out | heard | learned | noticed | argued | mentioned | decided | wanted | tried |
    started | built | bought | sold | lost | missed | loved | hated | changed | moved | helped |
    asked about | explained | discovered | wrote about | read about | watched | played |
    listened to | worked on | talked about | looked at | thought about | dealt with | came up
    with | ended up with | grew up with | signed up for | paid for | went through | got into
    """
)
_OBJECTS = _phrases(
    """
    the whole thing | this episode | the last episode | that story | the book | the interview |
    the market | the economy | the election | the new policy | climate change | artificial
    intelligence | machine learning | the startup | the business model | the podcast | the first
    season | a new job | the house | the championship | the album | the concert | the recipe |
    mental health | the research | the experiment | the neighborhood | social media | the
    newsletter | the family business | the coffee shop | the schedule | the budget | the
    contract | the lawsuit | the investigation | the documentary | the character | the ending |
    the plot twist | the strategy | the evidence | the technology | the competition | the
    customers | the sponsors | the advertisers | the feedback | the reviews
    """
)
_CLAUSES = _phrases(
    """
    it was {adj} | that's {adv} {adj} | it's {adv} {adj} | there's a lot of {noun} | we don't
    {verb} that | I can't {verb} it | you have to {verb} it | they didn't want to {verb} {obj} |
    it doesn't matter | that's the point | we're going to talk about {obj} | I'm not sure about
    {obj} | let's talk about {obj} | we'll get to that in a minute | I've been thinking about
    {obj} | you're right | it's been {num} years | about {num} percent of {noun} | in {year} |
    back in {year} | for {num} minutes | more than {num} people | around {num} dollars | {num}
    or {num} times | the {ordinal} time | on the {ordinal} day
    """
)
_ADVERBS = _phrases(
    """
    really | actually | basically | literally | honestly | definitely | probably | totally |
    completely | obviously | clearly | seriously | kind of | sort of | pretty much | just |
    always | never | sometimes | usually | finally | already
    """
)
_ADJECTIVES = _phrases(
    """
    amazing | interesting | important | difficult | easy | hard | great | terrible | incredible
    | fascinating | weird | strange | funny | crazy | wild | huge | expensive | different |
    simple | complicated | obvious | surprising | exciting | boring | scary | beautiful |
    powerful | successful | popular | personal
    """
)
_VERBS = _phrases(
    """
    understand | explain | believe | remember | imagine | change | fix | build | measure |
    predict | afford | handle | ignore | support | recommend | describe | compare | share |
    teach | learn | follow | trust | expect | answer | solve
    """
)
_NOUNS = _phrases(
    """
    people | things | money | time | work | energy | information | data | stuff | research |
    evidence | pressure | attention | experience | opportunity | risk | growth | change | value
    | support | criticism | content | music | history
    """
)
_NUMBERS = _phrases(
    """
    two | three | four | five | six | ten | twelve | fifteen | twenty | thirty | fifty | a
    hundred | a thousand | a million | 1 | 2 | 3 | 5 | 7 | 10 | 12 | 15 | 20 | 25 | 30 | 40 | 50
    | 75 | 100 | 200 | 500 | 1,000 | 10,000
    """
)
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "last", "next", "tenth")
_LINKS = (", and", ", but", " because", " so", ", which means", " when", " and then")
_ENDINGS = (".", ".", ".", ".", "?", "?", "!", "...")


def _template_sentence(rng: random.Random) -> str:
    """One grammatical-ish spoken-English sentence, as in a podcast transcript."""
    pick = rng.choice
    text = pick(_OPENERS) + ", "
    if rng.random() < 0.3:
        text += pick(("um", "uh", "you know", "like", "I mean")) + ", "
    text += f"{pick(_SUBJECTS)} {pick(_ADVERBS)} {pick(_PREDICATES)} {pick(_OBJECTS)}"
    for _ in range(rng.randint(0, 2)):
        clause = pick(_CLAUSES).format(
            adj=pick(_ADJECTIVES),
            adv=pick(_ADVERBS),
            noun=pick(_NOUNS),
            verb=pick(_VERBS),
            obj=pick(_OBJECTS),
            num=pick(_NUMBERS),
            year=rng.randint(1950, 2025),
            ordinal=pick(_ORDINALS),
        )
        text += f"{pick(_LINKS)} {clause}"
    return text + pick(_ENDINGS)


def _word_sentence(rng: random.Random, words: list[str], weights: list[float]) -> str:
    """A run of 6-30 words drawn from ``words`` by ``weights``, 10% of them capitalised."""
    drawn = rng.choices(words, weights=weights, k=rng.randint(6, 30))
    text = " ".join(w[:1].upper() + w[1:] if rng.random() < 0.1 else w for w in drawn)
    return text[:1].upper() + text[1:] + rng.choice(_ENDINGS)


# Every character a transcript commonly holds, so that none of them maps to <unk>.
_CHARACTERS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 "
    ". , ; : ! ? ' \" ( ) [ ] { } - _ + = * & % $ # @ / \\ | < > ~ ^ ` "
    "\u2019 \u2018 \u201c \u201d \u2014 \u2013 \u2026 "
    "\u00e9 \u00e8 \u00e0 \u00f1 \u00fc \u00f6 \u00e7 \u20ac \u00a3"
)


def corpus(num_sentences: int = 10000, seed: int = _CORPUS_SEED) -> list[str]:
    """Return a deterministic corpus of spoken-English-like podcast transcript text.

    Half the sentences follow templates of conversational speech (fillers, contractions,
    numbers, years); the other half draw from about 2,500 English words, the common ones
    more often (weight ``(rank + 30) ** -0.5``: flat enough that every word recurs), so that
    a tokenizer trained on the corpus keeps most words whole. A last line holds every
    character transcripts commonly contain.

    Args:
        num_sentences: Number of generated sentences.
        seed: Seed of the generator (the corpus is a pure function of both arguments).

    Returns:
        The sentences.
    """
    rng = random.Random(seed)
    words = list(dict.fromkeys(_WORDS.split()))
    weights = [(rank + 30) ** -0.5 for rank in range(len(words))]
    sentences = [
        _word_sentence(rng, words, weights) if i % 2 else _template_sentence(rng)
        for i in range(num_sentences)
    ]
    sentences.append(_CHARACTERS)
    return sentences


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(vocab_size: int, directory: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Train a T5-style SentencePiece unigram tokenizer and save it into ``directory``.

    The SentencePiece model has ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and no BOS, like
    T5's ``spiece.model``; the transformers ``T5Tokenizer`` built from it adds the 100
    ``<extra_id_N>`` sentinels after the pieces (``<extra_id_0>`` last, as in T5) and appends
    ``</s>`` to every sequence. Common English words are one token; rare ones split into
    pieces: about 1.2-1.4 tokens a word on conversational English, more on jargon (1.5 on a
    mixed sample); the real 32k T5 vocabulary keeps more rare words whole.

    Args:
        vocab_size: Rows of the model's embedding matrix. The tokenizer's length (trained
            pieces + sentinels) never exceeds it; at most ``vocab_size - 100`` pieces, capped
            at :data:`MAX_TRAINED_PIECES`, are asked for, fewer if the corpus cannot support
            them (4,503 pieces at most).
        directory: Where ``spiece.model``, ``tokenizer.json`` and ``tokenizer_config.json``
            are written (created if missing).

    Returns:
        The tokenizer, with ``model_max_length`` = 512.

    Raises:
        ValueError: If ``vocab_size`` is too small for the sentinels and a usable vocabulary.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    pieces = _tokenizer_pieces(vocab_size)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model_bytes = io.BytesIO()  # in memory: no temporary path recorded in the model
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model_bytes,
        model_type="unigram",
        vocab_size=pieces,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,  # deterministic: the same bytes on every build
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory(prefix="podembed-spm-") as tmp:
        # transformers 5 converts a directory holding only spiece.model into a fast tokenizer.
        (Path(tmp) / "spiece.model").write_bytes(model_bytes.getvalue())
        tokenizer = T5Tokenizer.from_pretrained(tmp, extra_ids=EXTRA_IDS, model_max_length=MAX_SEQ_LENGTH)
        tokenizer.save_pretrained(str(out))
    # transformers 5 saves only tokenizer.json; keep spiece.model too, as T5 repositories do.
    (out / "spiece.model").write_bytes(model_bytes.getvalue())
    if len(tokenizer) > vocab_size:  # pragma: no cover - guarded by _tokenizer_pieces
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {vocab_size}")
    return tokenizer


# --------------------------------------------------------------------------- model


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` for ``torch.float32``, ``"float32"`` or ``"torch.float32"``."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"not a floating-point torch dtype: {dtype!r}")
    return resolved


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default floating dtype (new parameters are made in it)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _random_encoder(shape: T5Shape, device: torch.device, dtype: torch.dtype) -> T5EncoderModel:
    """Construct a T5 encoder with T5's own random initialisation, directly on ``device``.

    Parameters are created and initialised where they live (no CPU copy, no accelerate
    needed), so the XL shape takes about a second on a GPU; on CPU, T5's normal
    initialisation of 1.2 B parameters takes about 30 s on two cores.
    """
    import torch
    from transformers import T5EncoderModel

    with torch.device(device), _default_dtype(dtype):
        model = T5EncoderModel(t5_config(shape))
    model.config.dtype = dtype  # recorded in config.json, as from_pretrained would
    return model.eval()


def _assemble(
    encoder: T5EncoderModel,
    tokenizer_dir: Path,
    shape: T5Shape,
    include_prompt: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> SentenceTransformer:
    """Wrap ``encoder`` and the tokenizer in ``tokenizer_dir`` as Transformer -> Pooling -> Dense
    -> Normalize.

    sentence-transformers' Transformer module can only be made by loading a checkpoint, so
    it loads a one-layer skeleton written next to the tokenizer and then takes ``encoder`` as
    its model (``Transformer.model``, also exposed as ``auto_model``); the module derives
    nothing else from the weights it loaded.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import T5EncoderModel

    skeleton = tokenizer_dir
    skeleton_shape = T5Shape(8, 1, 1, 8, 8, shape.vocab_size, 8, shape.feed_forward_proj)
    with _quiet_transformers():
        with _default_dtype(torch.float32):
            T5EncoderModel(t5_config(skeleton_shape)).save_pretrained(str(skeleton))
        transformer = Transformer(str(skeleton))
    transformer.model = encoder
    if transformer.auto_model is not encoder or transformer.get_embedding_dimension() != (shape.d_model):
        raise RuntimeError("sentence-transformers' Transformer module did not take the encoder")
    transformer.max_seq_length = MAX_SEQ_LENGTH

    pooling = Pooling(shape.d_model, pooling_mode="mean", include_prompt=include_prompt)
    with torch.device(device), _default_dtype(dtype):
        dense = Dense(shape.d_model, shape.out_dim, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device=str(device))
    return model.to(device=device, dtype=dtype).eval()


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A scope whose seeding does not disturb the caller's RNG state (CPU and ``device``)."""
    import torch

    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=devices)


def build_in_memory(
    shape: T5Shape = INSTRUCTOR_XL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = "float32",
    *,
    seed: int = 0,
    include_prompt: bool = True,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> SentenceTransformer:
    """Build a random-weight INSTRUCTOR-layout model in memory, writing no weights to disk.

    Meant for GPU throughput benchmarks of the XL shape: parameters are created and
    initialised directly on ``device`` in ``dtype``, in about a second on a GPU.

    Args:
        shape: The architecture (:data:`INSTRUCTOR_XL` by default).
        device: Where the model lives (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        dtype: Parameter dtype of every module (use ``torch.bfloat16`` on a GPU, never
            ``float16`` for T5; ``float32`` on CPU).
        seed: Seed of the random weights (the caller's RNG state is left untouched).
        include_prompt: ``Pooling.include_prompt`` as built; INSTRUCTOR needs ``False``
            (set it with ``model.set_pooling_include_prompt(False)``, as for the real model).
        tokenizer_dir: A directory to keep the tokenizer and a tiny skeleton config in (a few
            hundred KB); a temporary directory, removed before returning, by default.

    Returns:
        A ``SentenceTransformer`` in eval mode on ``device``, ``max_seq_length`` 512.
    """
    import torch

    device = torch.device(device)
    dtype = _as_dtype(dtype)
    with contextlib.ExitStack() as stack:
        if tokenizer_dir is None:
            tokenizer_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="podembed-tok-"))
        work = Path(tokenizer_dir)
        build_tokenizer(shape.vocab_size, work)
        with _fork_rng(device):
            torch.manual_seed(seed)
            encoder = _random_encoder(shape, device, dtype)
            return _assemble(encoder, work, shape, include_prompt, device, dtype)


# --------------------------------------------------------------------------- on disk


def _marker(shape: T5Shape, seed: int, dtype: torch.dtype | str, include_prompt: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "shape": asdict(shape),
        "seed": seed,
        "dtype": str(_as_dtype(dtype)).removeprefix("torch."),
        "include_prompt": include_prompt,
    }


def is_complete(
    path: str | os.PathLike[str],
    shape: T5Shape = TINY,
    seed: int = 0,
    dtype: torch.dtype | str = "float32",
    include_prompt: bool = True,
) -> bool:
    """Tell whether ``path`` holds a finished model built by :func:`build_model` with these
    arguments (marker present and equal, weights and module list present)."""
    root = Path(path)
    try:
        recorded = json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    expected = _marker(shape, seed, dtype, include_prompt)
    if {key: recorded.get(key) for key in expected} != expected:
        return False
    return all((root / name).is_file() for name in ("modules.json", "config.json")) and any(
        root.glob("model*.safetensors")
    )


def build_model(
    path: str | os.PathLike[str],
    shape: T5Shape = TINY,
    seed: int = 0,
    dtype: torch.dtype | str = "float32",
    *,
    include_prompt: bool = True,
) -> Path:
    """Build a random-weight INSTRUCTOR-layout sentence-transformers model directory at ``path``.

    The directory has the layout of hkunlp/instructor-xl (``config.json``,
    ``model.safetensors``, ``spiece.model``, ``tokenizer.json``, ``modules.json``,
    ``sentence_bert_config.json``, ``1_Pooling/``, ``2_Dense/``, ``3_Normalize/``) and
    ``SentenceTransformer(str(path), device="cpu")`` loads it with no network. The build is
    cached: if ``path`` already holds a model built with the same arguments, nothing is done.
    The model is assembled in a temporary sibling directory and moved into place at the
    end, so a crash or a concurrent builder never leaves a half-written ``path``.

    Args:
        path: Target directory. It may be absent, empty, or a previous synthetic model
            (replaced when its arguments differ); any other non-empty directory is refused.
        shape: The architecture (:data:`TINY` by default; :data:`INSTRUCTOR_XL` writes 4.9 GB).
        seed: Seed of the random weights (the caller's RNG state is left untouched).
        dtype: Dtype of the saved weights.
        include_prompt: ``include_prompt`` saved in ``1_Pooling/config.json``; the default
            ``True`` is what the hub's instructor-xl files say.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileExistsError: If ``path`` is a non-empty directory (or a file) that this function
            did not build.
    """
    target = Path(path)
    if is_complete(target, shape, seed, dtype, include_prompt):
        return target
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        built = staging / "model"
        work = staging / "work"  # the tokenizer's spiece.model must outlive the save
        model = build_in_memory(
            shape, "cpu", dtype, seed=seed, include_prompt=include_prompt, tokenizer_dir=work
        )
        with _quiet_transformers():
            model.save(str(built), create_model_card=False)
        del model
        shutil.copyfile(work / "spiece.model", built / "spiece.model")
        marker = _marker(shape, seed, dtype, include_prompt)
        marker["encoder_parameters"] = shape.encoder_parameters()
        (built / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if not is_complete(target, shape, seed, dtype, include_prompt):  # a concurrent builder won
            _install(built, target)
        if not is_complete(target, shape, seed, dtype, include_prompt):
            raise RuntimeError(f"{target} was replaced concurrently by a different build")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_replaceable(target: Path) -> None:
    """Refuse to clobber anything but an empty directory or an earlier synthetic build."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(f"{target} exists and is not a directory")
    if any(target.iterdir()) and not (target / MARKER_FILE).is_file():
        raise FileExistsError(f"{target} is a non-empty directory not built by {__name__}")


def _install(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``, replacing an empty dir or an outdated synthetic build."""
    _check_replaceable(target)
    if target.exists():
        # Move the old build aside first so that the final rename is atomic.
        with contextlib.suppress(FileNotFoundError):  # another builder moved it already
            target.rename(built.parent / "old")
    try:
        built.rename(target)
    except OSError:
        # A concurrent builder installed first; is_complete() in the caller decides.
        if not (target / MARKER_FILE).is_file():
            raise
