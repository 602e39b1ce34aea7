import RotaService
import Testing

@Suite("Job envelopes")
struct EnvelopeTests {
    @Test("round trip, binary payloads, and clear errors for what is not an envelope")
    func roundTrip() throws {
        let envelope = try JobEnvelope(handler: "exec", payload: [0, 10, 255, 10])
        let decoded = try JobEnvelope(decoding: envelope.encoded())
        #expect(decoded == envelope)
        #expect(throws: EnvelopeError.self) { try JobEnvelope(decoding: Array("plain".utf8)) }
        #expect(throws: EnvelopeError.self) { try JobEnvelope(handler: "Bad Name", payload: []) }
        #expect(throws: EnvelopeError.self) { try JobEnvelope(decoding: Array("rota-job/1\nno-newline".utf8)) }
    }
}

@Suite struct HistoryWireTests {
    @Test("history entries with out-of-range times, revisions or counts are refused, not trapped on")
    func outOfRange() throws {
        func round(tick: String = "1800000000", revision: String = "1", counts: String = "[1,0,0]", at: String = "1800000000.5") -> [UInt8] {
            Array(#"{"id":"p/x/1","pool":"p","producer":"x","revision":\#(revision),"node":"n","tick":\#(tick),"started":1800000000.1,"finished":1800000001,"planned":[],"counts":\#(counts),"actions":[{"job":"j","action":"start","outcome":"started","at":\#(at)}]}"#.utf8)
        }
        let (record, actions) = try HistoryWire.decode(round())
        #expect(record.revision == 1 && record.started == 1 && actions.count == 1)
        for bad in [round(tick: "1e300"), round(tick: "-1e300"), round(tick: "0"), round(revision: "-1"), round(revision: "1e300"),
                    round(counts: "[-1,0,0]"), round(counts: "[1e300,0,0]"), round(at: "1e300")] {
            #expect(throws: (any Error).self) { try HistoryWire.decode(bad) }
        }
    }
}
