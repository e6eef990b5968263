//! Chat turns on the server: a message is answered by a turn the server owns
//! (`chat::turn`), so it runs to the end whoever watches it. Starting a turn
//! stores the question, retrieves context and asks the provider (an outbound
//! call, or the offline provider at once); the provider's stream comes back
//! through `pump_turns`, each piece becomes a `ChatEvent` the hub hands to
//! the chat's watchers, and the end stores the answer and fulfils the
//! waiting replies. Everything here runs under the server lock, in core: the
//! runtime only carries bytes.

use super::calls::{CallFailure, CallId, Phase as CallPhase, Purpose, TurnInput};
use super::pending::Ticket;
use super::{Server, ServerTimer};
use crate::chat::event::{ChatEvent, ChatEventKind};
use crate::chat::retrieval::{self, QueryVector, Snippet};
use crate::chat::session::Session;
use crate::chat::store::{self, Message, Role, Status};
use crate::chat::tools::{self, Policy};
use crate::chat::turn::{Listener, Phase, Retrieval, Shape, Turn, TurnId};
use crate::chat::{compact, emotion, offline};
use crate::dialect::{self, ekodb_ws, rest};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::providers::{
    self, Api, Choice, Failure, FailureKind, Prompt, PromptMessage, ProviderEvent, StreamError,
    StreamParser, ToolCall, ToolSpec,
};
use crate::time::Timestamp;
use crate::wire::http::client::OutboundRequest;
use serde_json::{json, Value as J};
use std::time::Duration;

/// Attempts at a provider call before its first token (transient failures).
const MAX_ATTEMPTS: u32 = 3;
/// A provider's `Retry-After` longer than this is the client's to wait out.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// Bytes of a provider's error body kept for the message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Client tools a chat may register.
const MAX_CLIENT_TOOLS: usize = 64;

/// A message to answer, as the dialects parse it (spec E3, B8).
#[derive(Clone, Debug, Default)]
pub struct SendRequest {
    pub message: String,
    pub llm_model: Option<String>,
    pub tool_config: Option<J>,
    pub max_iterations: Option<u32>,
    pub max_tokens: Option<u32>,
    pub client_tools: Vec<ToolSpec>,
    pub confirm_tools: Vec<String>,
    pub exclude_tools: Vec<String>,
    /// Summarize the history past this many messages instead of the
    /// server's `--chat-fold-after` (EVA's `SUMMARY_THRESHOLD`).
    pub fold_after: Option<usize>,
}

/// A stateless completion (spec E7).
#[derive(Clone, Debug, Default)]
pub struct RawRequest {
    pub system_prompt: String,
    pub message: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
}

/// A turn that started: where its events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The key its events are published under (the chat id, or a raw
    /// completion's own key).
    pub chat_key: String,
    pub message_id: String,
}

/// The end of an answer, for the dialect that shapes the reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub shape: Shape,
    pub chat_id: String,
    pub message_id: String,
    pub content: String,
    pub snippets: J,
    pub execution_time_ms: u64,
    pub token_usage: J,
}

/// Longest message accepted (bytes).
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

fn check_message(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid("`message` is required (a non-empty string)"));
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(Error::invalid(format!(
            "`message` is too long: {} bytes, at most {MAX_MESSAGE_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// The error for a provider that cannot be chosen: a name nobody knows is
/// bad input; a known provider without a key is a provider failure.
fn choice_error(f: Failure) -> Error {
    match f.kind {
        FailureKind::RequestError if f.status.is_none() => providers::unknown_provider(&f),
        _ => f.to_error(),
    }
}

/// Classifies a call that ended without a usable answer.
fn call_failure(provider: &str, failure: &CallFailure) -> Failure {
    let kind = match failure {
        CallFailure::Transport(_) | CallFailure::Timeout(CallPhase::Connect) => {
            FailureKind::Unreachable
        }
        CallFailure::Timeout(_)
        | CallFailure::Response(_)
        | CallFailure::TooLarge(_)
        | CallFailure::Overloaded => FailureKind::Unavailable,
    };
    Failure {
        kind,
        provider: provider.to_string(),
        status: None,
        retry_after_secs: None,
        message: format!("{provider} provider: {failure}"),
    }
}

fn stream_failure(provider: &str, e: StreamError) -> Failure {
    let kind = match &e {
        StreamError::Malformed(_) => FailureKind::Unavailable,
        StreamError::Provider { kind, .. } => *kind,
    };
    Failure {
        kind,
        provider: provider.to_string(),
        status: None,
        retry_after_secs: None,
        message: format!("{provider} provider: {e}"),
    }
}

/// The system prompt with the retrieved context, and the earlier messages
/// that fit the model's window (newest kept first).
fn build_prompt(
    session: &Session,
    history: &[Message],
    question: &str,
    snippets: &[Snippet],
    window: usize,
) -> (Option<String>, Vec<PromptMessage>) {
    let mut system = session.system_prompt.clone().unwrap_or_default();
    if !snippets.is_empty() {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(
            "Answer from these records of the user's database when they are relevant \
             (JSON, best match first):\n",
        );
        for s in snippets {
            system.push_str(&format!("- {}: {}\n", s.collection, s.record));
        }
    }
    let summaries: Vec<&Message> = history
        .iter()
        .filter(|m| m.summary && !m.forgotten)
        .collect();
    for m in summaries {
        system.push_str("\n\nEarlier conversation, summarised:\n");
        system.push_str(&m.content);
    }
    let usable: Vec<&Message> = history
        .iter()
        .filter(|m| !m.forgotten && !m.summary && m.status == Status::Complete)
        .filter(|m| m.role != Role::System)
        .collect();
    let keep = session.max_context_messages();
    let recent = &usable[usable.len().saturating_sub(keep)..];
    // Leave room for the answer: the window less a quarter.
    let budget = (window as u64).saturating_mul(3) / 4;
    let mut used = providers::estimate_tokens(&system) + providers::estimate_tokens(question);
    let mut kept: Vec<PromptMessage> = Vec::new();
    for m in recent.iter().rev() {
        let cost = providers::estimate_tokens(&m.content) + 4;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(match m.role {
            Role::Assistant => PromptMessage::Assistant {
                text: m.content.clone(),
                tool_calls: Vec::new(),
            },
            _ => PromptMessage::User(m.content.clone()),
        });
    }
    kept.reverse();
    kept.push(PromptMessage::User(question.to_string()));
    let system = Some(system).filter(|s| !s.trim().is_empty());
    (system, kept)
}

fn usage_json(prompt: Option<u64>, completion: Option<u64>) -> J {
    let total = match (prompt, completion) {
        (Some(p), Some(c)) => Some(p + c),
        _ => None,
    };
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total})
}

impl Server {
    fn elapsed_ms(&self, since: Timestamp, now: Timestamp) -> u64 {
        let now = self.clock.map_or(now, |c| c());
        now.since(since).as_millis() as u64
    }

    // ----- starting ---------------------------------------------------------

    /// Answers a message in a chat. Errors that come before the turn starts
    /// (no such chat, one already streaming, bad input, no provider) are
    /// returned; everything after goes to the listener and the watchers.
    pub fn chat_send(
        &mut self,
        chat_id: &str,
        req: SendRequest,
        listener: Option<Listener>,
        now: Timestamp,
    ) -> Result<Started> {
        check_message(&req.message)?;
        self.check_writable()?;
        let mut session = store::load_session(&self.engine, chat_id, now)?;
        self.check_idle(chat_id)?;
        // Refused before anything is stored when no provider can answer.
        let choice = self.choose_for(&session, &req)?;
        let mut history = store::messages(&self.engine, chat_id, now);
        let window = providers::context_window(&choice.model, self.config.chat_context_tokens);
        let budget = (window as u64) / 2;
        let fold_after = req.fold_after.unwrap_or(self.config.chat_fold_after);
        if let Some(keep) = compact::keep_when_over(&history, fold_after.max(2), budget) {
            compact::fold(&mut self.engine, &mut session, keep, now)?;
            history = store::messages(&self.engine, chat_id, now);
        }
        let question = req.message.clone();
        store::append(
            &mut self.engine,
            &mut session,
            Role::User,
            question.clone(),
            now,
        )?;
        self.begin_chat_turn(session, choice, history, question, req, listener, now)
    }

    /// Answers again the question before an assistant message (or a user
    /// message's question): the new answer is stored as another message.
    pub fn chat_regenerate(
        &mut self,
        chat_id: &str,
        message_id: &str,
        listener: Option<Listener>,
        now: Timestamp,
    ) -> Result<Started> {
        self.check_writable()?;
        let session = store::load_session(&self.engine, chat_id, now)?;
        self.check_idle(chat_id)?;
        let target = store::load_message(&self.engine, chat_id, message_id, now)?;
        let all = store::messages(&self.engine, chat_id, now);
        let user = if target.role == Role::User {
            Some(target.clone())
        } else {
            all.iter()
                .rev()
                .find(|m| m.seq < target.seq && m.role == Role::User)
                .cloned()
        };
        let user = user.ok_or_else(|| {
            Error::invalid("there is no question before this message to answer again")
        })?;
        let history: Vec<Message> = all.into_iter().filter(|m| m.seq < user.seq).collect();
        let req = SendRequest {
            message: user.content.clone(),
            ..SendRequest::default()
        };
        let choice = self.choose_for(&session, &req)?;
        self.begin_chat_turn(session, choice, history, user.content, req, listener, now)
    }

    /// The provider and model that answer a message of a session.
    fn choose_for(&self, session: &Session, req: &SendRequest) -> Result<Choice> {
        let model = req
            .llm_model
            .clone()
            .unwrap_or_else(|| session.llm_model.clone());
        providers::choose(&self.config, &session.llm_provider, &model).map_err(choice_error)
    }

    fn check_idle(&self, chat_id: &str) -> Result<()> {
        if self.turns.by_chat.contains_key(chat_id) {
            return Err(Error::conflict(
                "a response is already streaming for this chat; wait for it or cancel it",
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_chat_turn(
        &mut self,
        mut session: Session,
        choice: Choice,
        history: Vec<Message>,
        question: String,
        req: SendRequest,
        listener: Option<Listener>,
        now: Timestamp,
    ) -> Result<Started> {
        // A follow-up ("what does it cost?") borrows the previous question's
        // words, so retrieval finds what "it" is.
        let mut query = question.clone();
        if retrieval::is_follow_up(&question) {
            if let Some(prev) = history.iter().rev().find(|m| m.role == Role::User) {
                query = format!("{} {}", prev.content, question);
            }
        }
        // With an embedding provider, collections holding vectors are
        // searched with the question's own embedding: asked for first, the
        // prompt waits for it (`Phase::Retrieving`).
        let embed_first = self.question_embedding(&session, &query, now);
        let snippets = match embed_first {
            Some(_) => Vec::new(),
            None => retrieval::retrieve(
                &mut self.engine,
                &session.collections,
                &query,
                &QueryVector::Offline,
                now,
            ),
        };
        // The answer is stored from the start, marked incomplete: a restart
        // in the middle leaves it so, never lost and never twice.
        let seq = session.next_seq;
        session.next_seq += 1;
        session.updated_at = now;
        let mut placeholder =
            Message::new(&session.chat_id, seq, Role::Assistant, String::new(), now);
        placeholder.status = Status::Incomplete;
        placeholder.model = Some(choice.model.clone());
        placeholder.provider = Some(choice.provider.name.clone());
        store::save_message(&mut self.engine, &placeholder, now)?;
        store::save_session(&mut self.engine, &session, now)?;
        if let Some(why) = &choice.fallback {
            if self.fallback_noted.insert(session.llm_provider.clone()) {
                self.note(format!("chat: {why}"));
            }
        }
        let window = providers::context_window(&choice.model, self.config.chat_context_tokens);
        let (system, messages) = build_prompt(&session, &history, &question, &snippets, window);
        let collections: Vec<String> = session.collections.iter().map(|c| c.name.clone()).collect();
        let mut policy = Policy::new(
            session.tool_config.as_ref(),
            req.tool_config.as_ref(),
            collections,
        );
        if let Some(n) = req.max_iterations {
            policy.max_iterations = n.clamp(1, 20);
        }
        let mut tools = policy.specs(&req.exclude_tools);
        let mut client_tools = self
            .turns
            .client_tools
            .get(&session.chat_id)
            .cloned()
            .unwrap_or_default();
        for t in req.client_tools {
            if tools::is_server_tool(&t.name) {
                return Err(Error::invalid(format!(
                    "client tool `{}` has the name of a built-in tool",
                    t.name
                )));
            }
            client_tools.retain(|c| c.name != t.name);
            client_tools.push(t);
        }
        tools.extend(client_tools.iter().cloned());
        let prompt = Prompt {
            model: choice.model.clone(),
            system,
            messages,
            tools,
            max_tokens: req.max_tokens.or(session.max_tokens),
            temperature: session.temperature,
        };
        let gate = self.finish_operation(now);
        let chat_id = session.chat_id.clone();
        let first = embed_first.map(|request| {
            let pending = Retrieval {
                session,
                history,
                query,
                window,
            };
            (request, Box::new(pending))
        });
        let started = self.new_turn(
            Shape::Chat,
            chat_id,
            seq,
            question,
            choice,
            prompt,
            policy,
            (client_tools, req.confirm_tools),
            snippets,
            gate,
            listener,
            first,
            now,
        );
        Ok(started)
    }

    /// The call that embeds a turn's question, when an embedding provider
    /// is configured and one of the chat's collections holds vectors.
    fn question_embedding(
        &mut self,
        session: &Session,
        query: &str,
        now: Timestamp,
    ) -> Option<OutboundRequest> {
        if self.config.embed_url.is_empty()
            || !retrieval::wants_vector(&mut self.engine, &session.collections, now)
        {
            return None;
        }
        rest::embed::provider_request(
            &self.config,
            &self.config.embed_url,
            &[query.to_string()],
            &self.config.embed_model,
        )
        .ok()
    }

    /// Asks for the question's embedding; the answer starts when it is in
    /// (or, if the call cannot even start, with text retrieval alone).
    fn start_retrieval(
        &mut self,
        id: TurnId,
        request: OutboundRequest,
        pending: Box<Retrieval>,
        now: Timestamp,
    ) {
        match self
            .calls
            .start(request, Purpose::Retrieval(id), now, &mut self.timers)
        {
            Ok(call) => {
                if let Some(turn) = self.turns.active.get_mut(&id) {
                    turn.phase = Phase::Retrieving { call, pending };
                }
            }
            Err(failure) => self.finish_retrieval(
                id,
                *pending,
                QueryVector::None,
                Some(failure.to_string()),
                now,
            ),
        }
    }

    /// The question's embedding is in (or failed): retrieve, build the
    /// prompt, start the answer.
    fn finish_retrieval(
        &mut self,
        id: TurnId,
        pending: Retrieval,
        vector: QueryVector,
        failed: Option<String>,
        now: Timestamp,
    ) {
        if let Some(why) = failed {
            self.note(format!(
                "chat: the question could not be embedded ({why}); text retrieval alone gives the context"
            ));
        }
        let snippets = retrieval::retrieve(
            &mut self.engine,
            &pending.session.collections,
            &pending.query,
            &vector,
            now,
        );
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        let (system, messages) = build_prompt(
            &pending.session,
            &pending.history,
            &turn.question,
            &snippets,
            pending.window,
        );
        turn.prompt.system = system;
        turn.prompt.messages = messages;
        turn.snippets = snippets;
        turn.phase = Phase::Offline;
        self.start_answer(id, now);
    }

    /// Hands question embeddings to their turns.
    fn pump_retrievals(&mut self, now: Timestamp) {
        for (id, result) in std::mem::take(&mut self.calls.retrieval_results) {
            let Some(turn) = self.turns.active.get_mut(&id) else {
                continue;
            };
            if !matches!(turn.phase, Phase::Retrieving { .. }) {
                continue;
            }
            let Phase::Retrieving { pending, .. } =
                std::mem::replace(&mut turn.phase, Phase::Offline)
            else {
                continue;
            };
            let job = rest::embed::Job {
                model: self.config.embed_model.clone(),
                count: 1,
            };
            match rest::embed::vectors(&job, result) {
                Ok((mut v, _)) => {
                    let vector = v.swap_remove(0).into_iter().map(|x| x as f32).collect();
                    self.finish_retrieval(id, *pending, QueryVector::Given(vector), None, now);
                }
                Err(e) => {
                    self.finish_retrieval(id, *pending, QueryVector::None, Some(e.message), now)
                }
            }
        }
    }

    /// A stateless completion: no session, history, retrieval or tools.
    pub fn raw_complete(
        &mut self,
        req: RawRequest,
        listener: Option<Listener>,
        now: Timestamp,
    ) -> Result<Started> {
        check_message(&req.message)?;
        let choice = providers::choose(
            &self.config,
            req.provider.as_deref().unwrap_or(""),
            req.model.as_deref().unwrap_or(""),
        )
        .map_err(choice_error)?;
        let prompt = Prompt {
            model: choice.model.clone(),
            system: Some(req.system_prompt).filter(|s| !s.trim().is_empty()),
            messages: vec![PromptMessage::User(req.message.clone())],
            tools: Vec::new(),
            max_tokens: req.max_tokens,
            temperature: None,
        };
        let n = self.turns.new_id().0;
        let policy = Policy::new(None, None, Vec::new());
        let gate = self.durable.max(self.engine.last_lsn());
        Ok(self.new_turn(
            Shape::Raw,
            format!("raw:{n}"),
            n,
            req.message,
            choice,
            prompt,
            policy,
            (Vec::new(), Vec::new()),
            Vec::new(),
            gate,
            listener,
            None,
            now,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_turn(
        &mut self,
        shape: Shape,
        chat_id: String,
        seq: u64,
        question: String,
        choice: Choice,
        prompt: Prompt,
        policy: Policy,
        (client_tools, confirm_tools): (Vec<ToolSpec>, Vec<String>),
        snippets: Vec<Snippet>,
        gate: Lsn,
        listener: Option<Listener>,
        embed_first: Option<(OutboundRequest, Box<Retrieval>)>,
        now: Timestamp,
    ) -> Started {
        let id = self.turns.new_id();
        let message_id = match shape {
            Shape::Chat => store::message_id(&chat_id, seq),
            Shape::Raw => format!("raw-{seq}"),
        };
        let offline = choice.provider.api == Api::Offline;
        let tags = (!offline
            && prompt
                .system
                .as_deref()
                .is_some_and(|s| s.contains(emotion::INSTRUCTION)))
        .then(emotion::TagReader::default);
        let turn = Turn {
            id,
            shape,
            chat_id: chat_id.clone(),
            message_id: message_id.clone(),
            seq,
            question,
            choice,
            prompt,
            policy,
            client_tools,
            confirm_tools,
            started: now,
            phase: Phase::Offline,
            text: String::new(),
            round_text: String::new(),
            round_calls: Vec::new(),
            results: Default::default(),
            snippets,
            prompt_tokens: None,
            completion_tokens: None,
            tool_history: Vec::new(),
            iterations: 0,
            attempts: 0,
            events: Vec::new(),
            gate,
            end_lsn: gate,
            listeners: listener.into_iter().collect(),
            tags,
            emotion: None,
        };
        self.turns.by_chat.insert(chat_id.clone(), id);
        self.turns.active.insert(id, turn);
        self.emit(id, ChatEventKind::Started, now);
        match embed_first {
            Some((request, pending)) => self.start_retrieval(id, request, pending, now),
            None => self.start_answer(id, now),
        }
        Started {
            chat_key: chat_id,
            message_id,
        }
    }

    /// The provider starts answering (the offline one at once).
    fn start_answer(&mut self, id: TurnId, now: Timestamp) {
        let offline = self
            .turns
            .active
            .get(&id)
            .is_some_and(|t| t.choice.provider.api == Api::Offline);
        if offline {
            self.answer_offline(id, now);
        } else {
            self.call_provider(id, now);
        }
    }

    /// The offline provider: the answer from the retrieved records, streamed
    /// word by word, within the request.
    fn answer_offline(&mut self, id: TurnId, now: Timestamp) {
        let Some(turn) = self.turns.active.get(&id) else {
            return;
        };
        let text = match turn.shape {
            Shape::Chat => {
                let has_collections = store::load_session(&self.engine, &turn.chat_id, now)
                    .is_ok_and(|s| !s.collections.is_empty());
                offline::answer(&turn.question, &turn.snippets, has_collections)
            }
            Shape::Raw => offline::answer(&turn.question, &[], false),
        };
        let prompt_tokens = providers::estimate_tokens(turn.prompt.system.as_deref().unwrap_or(""))
            + turn
                .prompt
                .messages
                .iter()
                .map(|m| match m {
                    PromptMessage::User(t) => providers::estimate_tokens(t),
                    PromptMessage::Assistant { text, .. } => providers::estimate_tokens(text),
                    PromptMessage::Tool { content, .. } => providers::estimate_tokens(content),
                })
                .sum::<u64>();
        if let Some(turn) = self.turns.active.get_mut(&id) {
            turn.prompt_tokens = Some(prompt_tokens);
            turn.completion_tokens = Some(providers::estimate_tokens(&text));
        }
        for piece in offline::tokens(&text) {
            self.on_text(id, piece, now);
        }
        self.finish_turn(id, now);
    }

    // ----- the provider call ------------------------------------------------

    fn call_provider(&mut self, id: TurnId, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        turn.attempts += 1;
        let name = turn.choice.provider.name.clone();
        let request = match providers::request(&turn.choice.provider, &turn.prompt) {
            Ok(r) => r,
            Err(e) => {
                let failure = Failure {
                    kind: FailureKind::NotConfigured,
                    provider: name.clone(),
                    status: None,
                    retry_after_secs: None,
                    message: format!("{name} provider URL is not usable: {e}"),
                };
                return self.fail_turn(id, Some(failure), false, now);
            }
        };
        let Some(parser) = StreamParser::new(turn.choice.provider.api) else {
            return self.answer_offline(id, now);
        };
        match self
            .calls
            .start(request, Purpose::Turn(id), now, &mut self.timers)
        {
            Ok(call) => {
                if let Some(turn) = self.turns.active.get_mut(&id) {
                    turn.phase = Phase::Calling {
                        call,
                        parser,
                        error_status: None,
                        error_body: Vec::new(),
                    };
                }
            }
            Err(failure) => {
                let f = call_failure(&name, &failure);
                self.fail_turn(id, Some(f), false, now);
            }
        }
    }

    /// Hands the pieces of providers' responses to their turns. Runs after
    /// every call report and timer.
    pub(super) fn pump_turns(&mut self, now: Timestamp) {
        self.pump_retrievals(now);
        while !self.calls.turn_inputs.is_empty() {
            let inputs = std::mem::take(&mut self.calls.turn_inputs);
            for (id, call, input) in inputs {
                self.turn_input(id, call, input, now);
            }
        }
    }

    fn turn_input(&mut self, id: TurnId, call_id: CallId, input: TurnInput, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        let provider = turn.choice.provider.name.clone();
        let Phase::Calling {
            call,
            parser,
            error_status,
            error_body,
        } = &mut turn.phase
        else {
            return;
        };
        if *call != call_id {
            return;
        }
        match input {
            TurnInput::Head(head) => {
                if head.status != 200 {
                    let retry_after = head.header("retry-after").map(str::to_string);
                    *error_status = Some((head.status, retry_after));
                }
            }
            TurnInput::Data(bytes) => {
                if error_status.is_some() {
                    let room = MAX_ERROR_BODY.saturating_sub(error_body.len());
                    error_body.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    return;
                }
                match parser.feed(&bytes) {
                    Ok(events) => self.provider_events(id, events, now),
                    Err(e) => {
                        self.abandon_call(id, now);
                        self.failed_attempt(id, stream_failure(&provider, e), now);
                    }
                }
            }
            TurnInput::End => {
                if let Some((status, retry_after)) = error_status.take() {
                    let f = providers::http_failure(
                        &provider,
                        status,
                        retry_after.as_deref(),
                        error_body,
                    );
                    return self.failed_attempt(id, f, now);
                }
                match parser.finish() {
                    Ok(events) => {
                        self.provider_events(id, events, now);
                        self.round_over(id, now);
                    }
                    Err(e) => self.failed_attempt(id, stream_failure(&provider, e), now),
                }
            }
            TurnInput::Failed(failure) => {
                let f = match error_status.take() {
                    Some((status, retry_after)) => providers::http_failure(
                        &provider,
                        status,
                        retry_after.as_deref(),
                        error_body,
                    ),
                    None => call_failure(&provider, &failure),
                };
                self.failed_attempt(id, f, now);
            }
        }
    }

    /// Stops a turn's running call (its answer is not wanted any more).
    fn abandon_call(&mut self, id: TurnId, now: Timestamp) {
        if let Some(Turn {
            phase: Phase::Calling { call, .. } | Phase::Retrieving { call, .. },
            ..
        }) = self.turns.active.get(&id)
        {
            let call = *call;
            self.calls.cancel(call, now, &mut self.timers);
        }
    }

    fn provider_events(&mut self, id: TurnId, events: Vec<ProviderEvent>, now: Timestamp) {
        for event in events {
            match event {
                ProviderEvent::Text(t) => self.on_text(id, t, now),
                ProviderEvent::ToolCall(call) => {
                    if let Some(turn) = self.turns.active.get_mut(&id) {
                        turn.round_calls.push(call);
                    }
                }
                ProviderEvent::Usage { prompt, completion } => {
                    if let Some(turn) = self.turns.active.get_mut(&id) {
                        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                            (Some(a), Some(b)) => Some(a + b),
                            (a, b) => a.or(b),
                        };
                        turn.prompt_tokens = add(turn.prompt_tokens, prompt);
                        turn.completion_tokens = add(turn.completion_tokens, completion);
                    }
                }
                ProviderEvent::Finish(_) => {}
            }
        }
    }

    fn on_text(&mut self, id: TurnId, text: String, now: Timestamp) {
        if text.is_empty() {
            return;
        }
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        // A leading emotion tag is the model's, not the answer's.
        let text = match turn.tags.as_mut() {
            Some(reader) => {
                let (emotion, out) = reader.feed(&text);
                turn.emotion = turn.emotion.or(emotion);
                out
            }
            None => text,
        };
        if text.is_empty() {
            return;
        }
        turn.text.push_str(&text);
        turn.round_text.push_str(&text);
        self.emit(id, ChatEventKind::Token(text), now);
    }

    /// Text a tag reader still holds when the answer ends goes out.
    fn release_held(&mut self, id: TurnId, now: Timestamp) {
        let held = self
            .turns
            .active
            .get_mut(&id)
            .and_then(|t| t.tags.take())
            .map(|mut r| r.finish())
            .unwrap_or_default();
        self.on_text(id, held, now);
    }

    /// A provider attempt failed: try again if nothing was streamed yet and
    /// the failure is worth it, else the turn fails.
    fn failed_attempt(&mut self, id: TurnId, failure: Failure, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        let wait = match failure.retry_after_secs {
            Some(s) => Duration::from_secs(s),
            None => Duration::from_millis(250 << turn.attempts.min(4)),
        };
        let retry = failure.kind.is_transient()
            && !turn.got_tokens()
            && turn.round_calls.is_empty()
            && turn.iterations == 0
            && turn.attempts < MAX_ATTEMPTS
            && wait <= MAX_RETRY_WAIT;
        if retry {
            turn.phase = Phase::Retrying;
            self.timers
                .set(ServerTimer::Turn(id), Some(now.saturating_add(wait)));
        } else {
            self.fail_turn(id, Some(failure), false, now);
        }
    }

    /// A turn's deadline: retry its provider call, or give up on the client
    /// tools that did not answer.
    pub(super) fn turn_timeout(&mut self, id: TurnId, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        match &turn.phase {
            Phase::Retrying => self.call_provider(id, now),
            Phase::AwaitingClient { waiting } => {
                let secs = self.config.chat_client_tool_timeout_secs;
                for call in waiting.clone() {
                    turn.results.entry(call).or_insert((
                        false,
                        J::String(format!("the client did not answer within {secs} s")),
                    ));
                }
                self.continue_after_tools(id, now);
            }
            _ => {}
        }
    }

    // ----- tools ------------------------------------------------------------

    /// The provider finished a round: the answer is complete, or it asked for
    /// tools.
    fn round_over(&mut self, id: TurnId, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        if turn.round_calls.is_empty() {
            return self.finish_turn(id, now);
        }
        if turn.iterations >= turn.policy.max_iterations {
            let limit = turn.policy.max_iterations;
            if turn.text.trim().is_empty() {
                turn.text = format!(
                    "(The model kept calling tools: stopped after {limit} rounds, the limit for this message.)"
                );
            }
            return self.finish_turn(id, now);
        }
        turn.phase = Phase::Offline;
        let calls = turn.round_calls.clone();
        let client: Vec<String> = turn.client_tools.iter().map(|t| t.name.clone()).collect();
        let confirm = turn.confirm_tools.clone();
        let mut waiting = Vec::new();
        for call in calls {
            let args: J = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            if client.contains(&call.name) || confirm.contains(&call.name) {
                waiting.push(call.id.clone());
                self.emit(
                    id,
                    ChatEventKind::ToolCall {
                        call_id: call.id.clone(),
                        tool: call.name.clone(),
                        args,
                        client: true,
                    },
                    now,
                );
            } else {
                self.run_server_tool(id, &call, args, now);
            }
        }
        if waiting.is_empty() {
            self.continue_after_tools(id, now);
        } else if let Some(turn) = self.turns.active.get_mut(&id) {
            turn.phase = Phase::AwaitingClient { waiting };
            let timeout = Duration::from_secs(self.config.chat_client_tool_timeout_secs.max(1));
            self.timers
                .set(ServerTimer::Turn(id), Some(now.saturating_add(timeout)));
        }
    }

    fn run_server_tool(&mut self, id: TurnId, call: &ToolCall, args: J, now: Timestamp) {
        let Some(turn) = self.turns.active.get(&id) else {
            return;
        };
        let policy = turn.policy.clone();
        let offered = turn.prompt.tools.iter().any(|t| t.name == call.name);
        self.emit(
            id,
            ChatEventKind::ToolCall {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                args: args.clone(),
                client: false,
            },
            now,
        );
        let result = if offered {
            tools::execute(&mut self.engine, &policy, &call.name, &args, now)
        } else {
            Err(format!(
                "tool `{}` is not available in this chat",
                call.name
            ))
        };
        let (success, value) = match result {
            Ok(v) => (true, v),
            Err(e) => (false, J::String(e)),
        };
        self.emit(
            id,
            ChatEventKind::ToolResult {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                args,
                success,
                result: value.clone(),
            },
            now,
        );
        if let Some(turn) = self.turns.active.get_mut(&id) {
            turn.results.insert(call.id.clone(), (success, value));
        }
    }

    /// Every tool call of the round has its result: tell the model and ask
    /// again.
    fn continue_after_tools(&mut self, id: TurnId, now: Timestamp) {
        self.timers.cancel(ServerTimer::Turn(id));
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        let calls = std::mem::take(&mut turn.round_calls);
        let text = std::mem::take(&mut turn.round_text);
        turn.prompt.messages.push(PromptMessage::Assistant {
            text,
            tool_calls: calls.clone(),
        });
        for call in &calls {
            let (success, value) = turn
                .results
                .remove(&call.id)
                .unwrap_or((false, J::String("no result".into())));
            let content = if success {
                value.to_string()
            } else {
                format!("error: {}", value.as_str().unwrap_or(&value.to_string()))
            };
            turn.prompt.messages.push(PromptMessage::Tool {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
            });
            let mut entry = json!({"tool": call.name, "call_id": call.id, "success": success});
            entry[if success { "result" } else { "error" }] = value;
            turn.tool_history.push(entry);
        }
        turn.iterations += 1;
        self.call_provider(id, now);
    }

    /// A client's result for a tool call of the chat's running turn (or a
    /// keepalive that extends its deadline). A confirmed server tool runs
    /// now.
    pub fn chat_tool_result(
        &mut self,
        chat_id: &str,
        call_id: &str,
        outcome: Option<(bool, J)>,
        now: Timestamp,
    ) -> Result<()> {
        let unknown =
            || Error::not_found(format!("no tool call `{call_id}` is waiting in this chat"));
        let id = *self.turns.by_chat.get(chat_id).ok_or_else(unknown)?;
        let turn = self.turns.active.get_mut(&id).ok_or_else(unknown)?;
        let Phase::AwaitingClient { waiting } = &mut turn.phase else {
            // A result for a server tool's progress frame: already answered.
            if turn.events.iter().any(|e| matches!(&e.kind, ChatEventKind::ToolCall { call_id: c, client: false, .. } if c == call_id)) {
                return Ok(());
            }
            return Err(unknown());
        };
        if !waiting.iter().any(|c| c == call_id) || turn.results.contains_key(call_id) {
            return Err(unknown());
        }
        let Some((success, value)) = outcome else {
            let timeout = Duration::from_secs(self.config.chat_client_tool_timeout_secs.max(1));
            self.timers
                .set(ServerTimer::Turn(id), Some(now.saturating_add(timeout)));
            return Ok(());
        };
        let waiting = waiting.clone();
        let call = turn.round_calls.iter().find(|c| c.id == call_id).cloned();
        let confirmed_server_tool = call.as_ref().filter(|c| {
            turn.confirm_tools.contains(&c.name)
                && !turn.client_tools.iter().any(|t| t.name == c.name)
        });
        match (confirmed_server_tool.cloned(), success) {
            (Some(call), true) => {
                let args: J = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
                self.run_server_tool(id, &call, args, now);
            }
            (Some(_), false) => {
                turn.results.insert(
                    call_id.to_string(),
                    (
                        false,
                        J::String("the user did not allow this tool call".into()),
                    ),
                );
            }
            (None, _) => {
                turn.results.insert(call_id.to_string(), (success, value));
            }
        }
        let Some(turn) = self.turns.active.get(&id) else {
            return Ok(());
        };
        if waiting.iter().all(|c| turn.results.contains_key(c)) {
            self.continue_after_tools(id, now);
        }
        Ok(())
    }

    /// Registers client tools for a chat (WebSocket `RegisterClientTools`):
    /// offered to the model on every later message of the chat.
    pub fn register_client_tools(&mut self, chat_id: &str, tools: Vec<ToolSpec>) -> Result<usize> {
        if let Some(t) = tools.iter().find(|t| tools::is_server_tool(&t.name)) {
            return Err(Error::invalid(format!(
                "client tool `{}` has the name of a built-in tool",
                t.name
            )));
        }
        if tools.len() > MAX_CLIENT_TOOLS {
            return Err(Error::invalid(format!(
                "at most {MAX_CLIENT_TOOLS} client tools per chat"
            )));
        }
        let n = tools.len();
        // Bounded by the number of chats that exist.
        if !chat_id.is_empty()
            && self
                .engine
                .get_internal(store::SESSIONS, chat_id, Timestamp::EPOCH)
                .is_some()
        {
            self.turns.client_tools.insert(chat_id.to_string(), tools);
        }
        Ok(n)
    }

    // ----- ending -----------------------------------------------------------

    /// The answer is complete: store it, then tell everyone.
    fn finish_turn(&mut self, id: TurnId, now: Timestamp) {
        self.timers.cancel(ServerTimer::Turn(id));
        self.release_held(id, now);
        let Some(turn) = self.turns.active.get(&id) else {
            return;
        };
        let elapsed = self.elapsed_ms(turn.started, now);
        let usage = usage_json(turn.prompt_tokens, turn.completion_tokens);
        let snippets = J::Array(turn.snippets.iter().map(Snippet::to_wire).collect());
        let history = J::Array(turn.tool_history.clone());
        let window = providers::context_window(&turn.choice.model, self.config.chat_context_tokens);
        let mut sources: Vec<String> = Vec::new();
        for label in turn.snippets.iter().map(Snippet::label) {
            if !sources.contains(&label) {
                sources.push(label);
            }
        }
        let mut summary_version = 0;
        let answer = Answer {
            shape: turn.shape,
            chat_id: turn.chat_id.clone(),
            message_id: turn.message_id.clone(),
            content: turn.text.clone(),
            snippets: snippets.clone(),
            execution_time_ms: elapsed,
            token_usage: usage.clone(),
        };
        if turn.shape == Shape::Chat {
            let mut m = Message::new(
                &turn.chat_id,
                turn.seq,
                Role::Assistant,
                turn.text.clone(),
                turn.started,
            );
            m.model = Some(turn.choice.model.clone());
            m.provider = Some(turn.choice.provider.name.clone());
            m.token_usage = Some(usage.clone());
            m.context_snippets = Some(snippets);
            m.tool_call_history = Some(history.clone()).filter(|_| !turn.tool_history.is_empty());
            // The chat may have been deleted while it answered: nothing to
            // store the answer in then.
            let chat_id = turn.chat_id.clone();
            if let Ok(mut session) = store::load_session(&self.engine, &chat_id, now) {
                session.updated_at = now;
                summary_version = session.summary_version;
                let stored = store::save_message(&mut self.engine, &m, now)
                    .and_then(|()| store::save_session(&mut self.engine, &session, now));
                if let Err(e) = stored {
                    return self.fail_with(id, e, None, false, now);
                }
            }
        }
        let end_lsn = self.finish_operation(now);
        if let Some(turn) = self.turns.active.get_mut(&id) {
            turn.end_lsn = end_lsn;
        }
        self.emit(
            id,
            ChatEventKind::Done {
                content: answer.content.clone(),
                execution_time_ms: elapsed,
                token_usage: usage,
                context_window: window as u64,
                tool_call_history: history,
                sources,
                summary_version,
            },
            now,
        );
        self.end_turn(id, Ok(answer));
    }

    /// The turn failed (a provider failure carries its classification) or
    /// was cancelled: nothing is stored for the answer.
    fn fail_turn(&mut self, id: TurnId, failure: Option<Failure>, cancelled: bool, now: Timestamp) {
        self.release_held(id, now);
        let error = match (&failure, cancelled) {
            (_, true) => Error::conflict("chat cancelled"),
            (Some(f), _) => f.to_error(),
            (None, _) => Error::internal("the answer failed"),
        };
        self.fail_with(id, error, failure, cancelled, now);
    }

    fn fail_with(
        &mut self,
        id: TurnId,
        error: Error,
        failure: Option<Failure>,
        cancelled: bool,
        now: Timestamp,
    ) {
        self.timers.cancel(ServerTimer::Turn(id));
        self.settle_failed_answer(id, cancelled, now);
        self.emit(
            id,
            ChatEventKind::Error {
                error: error.message.clone(),
                failure,
                cancelled,
            },
            now,
        );
        self.end_turn(id, Err(error));
    }

    /// An answer that did not complete: what was streamed stays, marked
    /// cancelled or failed; an answer with no text at all is removed.
    fn settle_failed_answer(&mut self, id: TurnId, cancelled: bool, now: Timestamp) {
        let Some(turn) = self.turns.active.get(&id) else {
            return;
        };
        if turn.shape != Shape::Chat {
            return;
        }
        let (chat_id, message_id) = (turn.chat_id.clone(), turn.message_id.clone());
        if turn.text.is_empty() {
            self.engine.purge(store::MESSAGES, &message_id);
        } else if let Ok(mut m) = store::load_message(&self.engine, &chat_id, &message_id, now) {
            m.content = turn.text.clone();
            m.status = if cancelled {
                Status::Cancelled
            } else {
                Status::Failed
            };
            // Best effort: the turn ends either way.
            let _ = store::save_message(&mut self.engine, &m, now);
        }
        let lsn = self.finish_operation(now);
        if let Some(turn) = self.turns.active.get_mut(&id) {
            turn.end_lsn = lsn;
        }
    }

    /// Fulfils the listeners and keeps the turn's events for resuming.
    fn end_turn(&mut self, id: TurnId, outcome: std::result::Result<Answer, Error>) {
        let Some(turn) = self.turns.active.remove(&id) else {
            return;
        };
        let took = self.clock.map(|c| c().since(turn.started));
        self.metrics.chat_answer(
            &turn.choice.provider.name,
            outcome.is_ok(),
            took,
            (turn.prompt_tokens, turn.completion_tokens),
        );
        let lsn = turn.end_lsn.max(turn.gate);
        for listener in &turn.listeners {
            match listener {
                Listener::Reply(ticket) => {
                    let response = match &outcome {
                        Ok(answer) => rest::chat::answer_response(answer),
                        Err(e) => rest::error_response(e),
                    };
                    self.complete(*ticket, response, lsn);
                }
                Listener::WsReply { conn, id, format } => {
                    let result = outcome
                        .as_ref()
                        .map(|a| json!({"content": a.content}))
                        .map_err(Clone::clone);
                    let bytes = ekodb_ws::reply(*format, id.as_deref(), result);
                    self.hub.enqueue(*conn, lsn, bytes, false);
                }
            }
        }
        self.turns.retire(turn);
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    /// Records an event and hands it to the chat's watchers.
    fn emit(&mut self, id: TurnId, kind: ChatEventKind, now: Timestamp) {
        let Some(turn) = self.turns.active.get_mut(&id) else {
            return;
        };
        let event = ChatEvent {
            emotion: turn.emotion,
            chat_id: turn.chat_id.clone(),
            message_id: turn.message_id.clone(),
            seq: turn.next_seq(),
            at: now,
            kind,
        };
        let lsn = turn.lsn_of(&event);
        self.hub
            .publish_chat(&turn.chat_id, lsn, event.is_terminal(), |codec| {
                dialect::encode_chat_event(&event, codec)
            });
        turn.events.push(event);
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    // ----- watching ---------------------------------------------------------

    /// A stream connection follows a chat's answer: the events so far after
    /// `after` (a resume position), then the rest live. False when nothing
    /// is known about that answer any more.
    pub fn chat_attach(
        &mut self,
        conn: ConnId,
        chat_key: &str,
        message_id: Option<&str>,
        after: Option<u32>,
    ) -> bool {
        let Some(codec) = self.hub.codec_of(conn) else {
            return false;
        };
        let Some(log) = self.turns.log(chat_key, message_id) else {
            return false;
        };
        let mut queued = Vec::new();
        for e in log.events {
            if after.is_some_and(|a| e.seq <= a) {
                continue;
            }
            let lsn = if e.is_terminal() {
                log.end_lsn.max(log.gate)
            } else {
                log.gate
            };
            if let Some(bytes) = dialect::encode_chat_event(e, codec) {
                queued.push((lsn, bytes, e.is_terminal()));
            }
        }
        let active = log.active;
        for (lsn, bytes, terminal) in queued {
            self.hub.enqueue(conn, lsn, bytes, terminal);
        }
        if active {
            self.hub.watch_chat(conn, chat_key);
        }
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
        true
    }

    /// Whether an answer's events can still be followed (running, or kept).
    pub fn chat_log_known(&self, chat_key: &str, message_id: Option<&str>) -> bool {
        self.turns.log(chat_key, message_id).is_some()
    }

    /// Stops a chat's running answer (from any connection). False when none
    /// runs.
    pub fn chat_cancel(&mut self, chat_id: &str, now: Timestamp) -> bool {
        let Some(&id) = self.turns.by_chat.get(chat_id) else {
            return false;
        };
        self.abandon_call(id, now);
        self.fail_turn(id, None, true, now);
        true
    }

    /// A connection went: with `chat-cancel-on-disconnect`, answers nobody
    /// else follows stop. Called before the hub forgets the connection.
    pub(super) fn chat_connection_closed(
        &mut self,
        conn: ConnId,
        abandoned: &[Ticket],
        now: Timestamp,
    ) {
        let ids: Vec<TurnId> = self.turns.active.keys().copied().collect();
        for id in ids {
            let Some(turn) = self.turns.active.get_mut(&id) else {
                continue;
            };
            turn.listeners.retain(|l| match l {
                Listener::Reply(t) => !abandoned.contains(t),
                Listener::WsReply { conn: c, .. } => *c != conn,
            });
            if !self.config.chat_cancel_on_disconnect {
                continue;
            }
            let watchers = self.hub.chat_watchers(&turn.chat_id);
            let followed_by_conn = watchers.contains(&conn);
            let others = watchers.iter().any(|c| *c != conn) || !turn.listeners.is_empty();
            if followed_by_conn && !others {
                let chat = turn.chat_id.clone();
                self.chat_cancel(&chat, now);
            }
        }
    }

    /// Forgets a deleted chat's running answer and kept state.
    pub fn chat_deleted(&mut self, chat_id: &str, now: Timestamp) {
        self.chat_cancel(chat_id, now);
        self.turns.forget_chat(chat_id);
    }

    /// A stored answer whose events are no longer kept (a restart, or long
    /// ago): one `done` event with the whole answer, or an `error` if it
    /// never completed.
    pub fn chat_replay_stored(
        &mut self,
        conn: ConnId,
        chat_id: &str,
        message_id: &str,
        now: Timestamp,
    ) -> Result<()> {
        let m = store::load_message(&self.engine, chat_id, message_id, now)?;
        if m.role != Role::Assistant {
            return Err(Error::invalid(
                "only an answer (an assistant message) can be streamed",
            ));
        }
        let Some(codec) = self.hub.codec_of(conn) else {
            return Err(Error::new(ErrorKind::Internal, "the stream is not open"));
        };
        let kind = match m.status {
            Status::Complete => ChatEventKind::Done {
                content: m.content,
                execution_time_ms: 0,
                token_usage: m.token_usage.unwrap_or(J::Null),
                context_window: 0,
                tool_call_history: m.tool_call_history.unwrap_or(json!([])),
                sources: m
                    .context_snippets
                    .as_ref()
                    .map(stored_sources)
                    .unwrap_or_default(),
                summary_version: store::load_session(&self.engine, chat_id, now)
                    .map_or(0, |s| s.summary_version),
            },
            status => ChatEventKind::Error {
                error: format!(
                    "this answer did not complete (it is stored as {}); send the message again",
                    status.as_str()
                ),
                failure: None,
                cancelled: status == Status::Cancelled,
            },
        };
        let event = ChatEvent {
            emotion: None,
            chat_id: chat_id.to_string(),
            message_id: message_id.to_string(),
            seq: 0,
            at: now,
            kind,
        };
        if let Some(bytes) = dialect::encode_chat_event(&event, codec) {
            let lsn = self.engine.last_lsn();
            self.hub.enqueue(conn, lsn, bytes, true);
        }
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
        Ok(())
    }
}

/// The sources of a stored answer's context snippets (as `Snippet::label`).
fn stored_sources(snippets: &J) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in snippets.as_array().into_iter().flatten() {
        let label = match s["record"].get("source").and_then(J::as_str) {
            Some(file) if !file.is_empty() => file.to_string(),
            _ => format!(
                "{}/{}",
                s["collection"].as_str().unwrap_or_default(),
                s["record"]["id"].as_str().unwrap_or_default()
            ),
        };
        if !out.contains(&label) {
            out.push(label);
        }
    }
    out
}
