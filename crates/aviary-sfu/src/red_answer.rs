//! Whether a publisher sends RED audio: the answer lists RED or plain Opus first on each
//! audio m-line, as its track asked.
//!
//! libwebrtc sends with the first codec of the answer, and str0m's answer puts RED first
//! wherever it was offered, so without this a track published with RED disabled would be
//! sent with it all the same (LiveKit's server orders its answer by the track's
//! `disable_red` too).

/// An audio m-line of a publisher's offer, for the caller to say whether its track wants
/// RED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferedAudio<'a> {
    /// Its mid.
    pub mid: &'a str,
    /// The track id of its `a=msid` line (LiveKit clients announce the track by it).
    pub track_id: Option<&'a str>,
}

/// `answer` with the RED payload type moved to the front of each audio m-line for which
/// `wants_red` says `Some(true)`, and to the back where it says `Some(false)` (looked up in
/// `offer` by mid). m-lines it knows nothing of (`None`), and those where RED was not
/// negotiated, are left as they are.
pub(crate) fn order_red(
    offer: &str,
    answer: &str,
    wants_red: &dyn Fn(OfferedAudio<'_>) -> Option<bool>,
) -> String {
    let decided: Vec<(&str, bool)> = sections(offer)
        .iter()
        .filter(|s| is_audio(s))
        .filter_map(|s| {
            let mid = attribute(s, "mid")?;
            let track_id = attribute(s, "msid").and_then(|v| v.split_whitespace().nth(1));
            Some((mid, wants_red(OfferedAudio { mid, track_id })?))
        })
        .collect();
    if decided.is_empty() {
        return answer.to_owned();
    }
    let eol = if answer.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = String::with_capacity(answer.len());
    for section in sections(answer) {
        let mid = attribute(&section, "mid");
        let first = (decided.iter())
            .find(|(m, _)| Some(*m) == mid && is_audio(&section))
            .map(|&(_, first)| first);
        let red = red_pt(&section);
        for line in &section {
            match (red, first) {
                (Some(red), Some(first)) if line.starts_with("m=audio ") => {
                    out.push_str(&move_red(line, red, first));
                }
                _ => out.push_str(line),
            }
            out.push_str(eol);
        }
    }
    out
}

/// The session part and each media section, as lists of lines (without line ends).
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut all: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            all.push(Vec::new());
        }
        if let Some(last) = all.last_mut() {
            last.push(line);
        }
    }
    all
}

fn is_audio(section: &[&str]) -> bool {
    section.first().is_some_and(|l| l.starts_with("m=audio "))
}

/// The value of the section's first `a=name:value` line.
fn attribute<'a>(section: &[&'a str], name: &str) -> Option<&'a str> {
    section.iter().find_map(|l| {
        l.strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
            .map(str::trim)
    })
}

/// The payload type mapped to `red/48000/2` in the section, if RED was negotiated there.
fn red_pt<'a>(section: &[&'a str]) -> Option<&'a str> {
    section.iter().find_map(|l| {
        let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .trim()
            .to_ascii_lowercase()
            .starts_with("red/48000")
            .then_some(pt.trim())
    })
}

/// `m=audio <port> <proto> <pts...>` with `red` moved to the front of the payload types
/// (`first`) or to their back.
fn move_red(mline: &str, red: &str, first: bool) -> String {
    let mut fields: Vec<&str> = mline.split(' ').collect();
    if fields.len() <= 3 {
        return mline.to_owned();
    }
    let others: Vec<&str> = fields
        .split_off(3)
        .into_iter()
        .filter(|pt| *pt != red)
        .collect();
    if first {
        fields.push(red);
        fields.extend(others);
    } else {
        fields.extend(others);
        fields.push(red);
    }
    fields.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=msid:stream mic-track\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:1\r\na=msid:stream other-track\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=rtpmap:96 VP8/90000\r\n";

    fn answer_with(mline0: &str, mline1: &str) -> String {
        format!(
            "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            {mline0}\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\n\
            {mline1}\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=rtpmap:96 VP8/90000\r\n"
        )
    }

    const OPUS_FIRST: &str = "m=audio 9 UDP/TLS/RTP/SAVPF 111 63";
    const RED_FIRST: &str = "m=audio 9 UDP/TLS/RTP/SAVPF 63 111";

    #[test]
    fn each_known_track_gets_the_order_it_asked_for() {
        let answer = answer_with(OPUS_FIRST, RED_FIRST);
        let asked = std::cell::RefCell::new(Vec::new());
        let out = order_red(OFFER, &answer, &|a| {
            asked
                .borrow_mut()
                .push((a.mid.to_owned(), a.track_id.map(str::to_owned)));
            Some(a.track_id == Some("mic-track"))
        });
        assert_eq!(out, answer_with(RED_FIRST, OPUS_FIRST));
        assert_eq!(
            asked.into_inner(),
            [
                ("0".to_owned(), Some("mic-track".to_owned())),
                ("1".to_owned(), Some("other-track".to_owned()))
            ],
            "asked about each audio m-line of the offer, video never"
        );
    }

    #[test]
    fn unknown_tracks_leave_the_answer_untouched() {
        let answer = answer_with(RED_FIRST, OPUS_FIRST);
        assert_eq!(order_red(OFFER, &answer, &|_| None), answer);
        let out = order_red(OFFER, &answer, &|a| (a.mid == "1").then_some(true));
        assert_eq!(out, answer_with(RED_FIRST, RED_FIRST), "m-line 0 as it was");
    }

    #[test]
    fn an_answer_without_red_is_left_alone() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(order_red(OFFER, answer, &|_| Some(true)), answer);
        assert_eq!(order_red(OFFER, answer, &|_| Some(false)), answer);
    }

    #[test]
    fn lf_only_sdp_keeps_its_line_ends() {
        let answer = answer_with(RED_FIRST, OPUS_FIRST).replace("\r\n", "\n");
        let out = order_red(OFFER, &answer, &|_| Some(true));
        assert_eq!(out, answer_with(RED_FIRST, RED_FIRST).replace("\r\n", "\n"));
    }
}
