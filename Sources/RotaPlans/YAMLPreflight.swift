// libyaml as bundled by Yams (its `CYaml` target). Yams has no public event API, and these checks
// must run *before* `Yams.compose`, so they use libyaml's parser directly.
internal import CYaml

/// Checks on the raw YAML events, before the document is composed into nodes. Linear in the text.
enum YAMLPreflight {
    /// The deepest nesting of collections accepted. The plan itself uses 5 levels (file, producers,
    /// producer, jobs, job), leaving 95 for payloads. Composing, converting and encoding are
    /// recursive: libyaml's own limit (1,000) overflows a 512 KiB thread stack (macOS' secondary
    /// and Swift-concurrency threads) from about 250 levels in debug builds and 500 in release.
    static let maximumDepth = 100

    struct Problem: Equatable {
        var line: Int
        var column: Int
        var message: String
    }

    /// Anchors and aliases (every one), and nesting deeper than `maximumDepth` (the first place),
    /// located 1-based like Yams' marks. Plan files reject anchors and aliases: Yams composes an alias
    /// as a shared copy of its anchor's node, so nested aliases ("billion laughs") make anything that
    /// walks the tree exponential — the payload's JSON conversion, and already `Yams.compose` itself,
    /// which hashes mapping keys (an alias used as a key). Stops at the first YAML error, which
    /// `Yams.compose` then reports.
    static func problems(in text: String) -> [Problem] {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return [] }
        defer { yaml_parser_delete(&parser) }
        var bytes = Array(text.utf8)
        return bytes.withUnsafeMutableBufferPointer { buffer in
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var found: [Problem] = []
            var depth = 0
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return found }
                defer { yaml_event_delete(&event) }
                let line = Int(event.start_mark.line) + 1
                let column = Int(event.start_mark.column) + 1
                let anchor: UnsafeMutablePointer<yaml_char_t>?
                switch event.type {
                case YAML_STREAM_END_EVENT, YAML_NO_EVENT:
                    return found
                case YAML_ALIAS_EVENT:
                    found.append(Problem(line: line, column: column, message: unsupported("*", event.data.alias.anchor)))
                    continue
                case YAML_SCALAR_EVENT:
                    anchor = event.data.scalar.anchor
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    anchor = event.type == YAML_SEQUENCE_START_EVENT ? event.data.sequence_start.anchor : event.data.mapping_start.anchor
                    depth += 1
                    if depth > maximumDepth {
                        found.append(Problem(line: line, column: column,
                            message: "nesting deeper than \(maximumDepth) levels of lists and mappings is not supported"))
                        return found
                    }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    depth -= 1
                    continue
                default:
                    continue
                }
                if let anchor {
                    found.append(Problem(line: line, column: column, message: unsupported("&", anchor)))
                }
            }
        }
    }

    private static func unsupported(_ sigil: String, _ name: UnsafeMutablePointer<yaml_char_t>?) -> String {
        let written = sigil + (name.map { String(cString: $0) } ?? "")
        return "anchors and aliases are not supported ('\(written)'): write the value out in full"
    }
}
