"""Real English words per topic and sub-topic for :mod:`recsys.synth`, so a pretrained BERT sees meaning."""

from __future__ import annotations

# topic -> (topic words, {sub-topic: sub-topic words})
TOPICS: dict[str, tuple[str, dict[str, str]]] = {
    "sports": (
        "team game season coach player score win victory league championship match fans stadium playoff tournament athlete",
        {"football": "quarterback touchdown defense kickoff tackle", "basketball": "dunk rebound court guard hoop", "tennis": "serve racket grass volley baseline"},
    ),
    "finance": (
        "market stocks investors bank economy shares earnings profit interest rates inflation trading fund dollar debt",
        {"markets": "index rally selloff bonds futures", "banking": "loans deposits mortgage credit lender", "crypto": "bitcoin blockchain token wallet exchange"},
    ),
    "health": (
        "doctors patients hospital disease treatment study medicine health symptoms vaccine clinic therapy nurses virus diet",
        {"fitness": "exercise workout muscles running strength", "nutrition": "vitamins protein vegetables sugar calories", "mental": "anxiety depression stress sleep mindfulness"},
    ),
    "tech": (
        "software company app users data computer internet startup device digital online platform chips network code",
        {"phones": "smartphone battery screen camera android", "ai": "algorithm robots learning neural automation", "security": "hackers breach password privacy malware"},
    ),
    "travel": (
        "trip vacation hotel flight destination tourists beach island resort passport airport journey cruise adventure luggage",
        {"europe": "paris italy castle museum cathedral", "outdoors": "hiking camping mountains trail national", "cities": "skyline subway neighborhood downtown nightlife"},
    ),
    "food": (
        "recipe cooking chef restaurant dinner kitchen flavor meal dessert bake delicious ingredients sauce breakfast lunch",
        {"baking": "bread cake cookies flour oven", "grilling": "barbecue steak burgers smoke charcoal", "vegan": "tofu plants lentils salad beans"},
    ),
    "science": (
        "scientists research discovery space planet experiment species climate laboratory theory physics biology universe data evidence",
        {"space": "nasa rocket telescope galaxy astronauts", "animals": "wildlife birds ocean whales forest", "physics": "quantum particles energy atoms gravity"},
    ),
    "politics": (
        "president election senate congress vote campaign government law policy governor democrats republicans court bill lawmakers",
        {"elections": "ballots polls candidates primary voters", "courts": "judge ruling justice lawsuit supreme", "foreign": "diplomats treaty sanctions embassy summit"},
    ),
    "music": (
        "album song band singer concert tour music fans guitar rapper stage lyrics record festival charts",
        {"rock": "drummer amplifier riff punk metal", "pop": "dance chart remix diva video", "classical": "orchestra symphony piano violin opera"},
    ),
    "movies": (
        "film movie actor actress director cinema box office trailer sequel hollywood studio premiere cast script",
        {"horror": "ghost haunted scream zombie terror", "comedy": "jokes laughs comedian funny sitcom", "awards": "oscar nominee golden globe ceremony"},
    ),
    "autos": (
        "car truck driver engine vehicle road electric speed model brand dealers miles highway fuel traffic",
        {"electric": "charging battery tesla range plug", "racing": "lap track pit formula circuit", "trucks": "pickup towing diesel cargo haul"},
    ),
    "weather": (
        "storm rain snow temperatures forecast wind weather cold heat flooding hurricane winter sunny clouds tornado",
        {"storms": "thunder lightning hail gusts warning", "winter": "blizzard ice freezing frost sleet", "heat": "drought wildfire humid scorching sunburn"},
    ),
}

# Shared words that carry no topic, so titles read like sentences and topic words are not the only tokens.
FILLER = (
    "new report says after year week today people first big more top best could says could may will what why how "
    "here this that just back again still very really could make know time day world local family life"
).split()

# Product-name words that carry no topic, for the shop generator's titles (recsys.synth_shop).
PRODUCT_FILLER = (
    "pack set kit pro mini max plus classic deluxe edition original premium essential compact portable "
    "large small bundle series collection standard ultra basic"
).split()
