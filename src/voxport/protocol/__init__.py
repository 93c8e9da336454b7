"""Request, response and SSE event models, named after openai-python's types so that our docs map
onto OpenAI's one to one. One module per feature; this package re-exports them all."""

from voxport.protocol.dictionaries import (  # noqa: F401
    DictionaryName,
    PronunciationDictionary,
    PronunciationDictionaryDeleted,
    PronunciationDictionaryList,
    PronunciationDictionaryParams,
)
from voxport.protocol.fields import (  # noqa: F401
    NonEmpty,
    Plain,
    ResponseFormat,
    StreamFormat,
    Text,
    Transcript,
    VoiceName,
    control_character,
)
from voxport.protocol.ops import (  # noqa: F401
    CacheCleared,
    Health,
    HealthCache,
    HealthCapacity,
    HealthJobs,
    HealthRouting,
    HealthSkipped,
    Model,
    ModelList,
    Ready,
)
from voxport.protocol.speech import (  # noqa: F401
    SpeechAudioDeltaEvent,
    SpeechAudioDoneEvent,
    SpeechCancelled,
    SpeechCancelParams,
    SpeechCreateParams,
    SpeechErrorEvent,
    SpeechWarningsEvent,
    StreamError,
    Usage,
    VoiceID,
)
from voxport.protocol.timings import (  # noqa: F401
    DialogueTurn,
    SpeechAudioSegmentEvent,
    SpeechSegment,
    SpeechTimedAudio,
)
from voxport.protocol.voices import (  # noqa: F401
    AudioVoice,
    AudioVoiceList,
    PromptText,
    VoiceAlias,
    VoiceAliasDeleted,
    VoiceAliasList,
    VoiceAliasParams,
    VoiceConsent,
    VoiceConsentCreateParams,
    VoiceConsentDeleted,
    VoiceConsentList,
    VoiceConsentListParams,
    VoiceConsentUpdateParams,
    VoiceCreateParams,
    VoiceDeleted,
    VoiceFromPathParams,
    VoiceList,
    VoiceObject,
    VoicesReloaded,
    VoiceUpload,
)
