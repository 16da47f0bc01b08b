-- Sends bubbles and files through Messages, in order.
-- Arguments: mode ("chat" or "handle"), target (chat guid or handle), then pairs of
-- kind ("text" or "file") and value (the text, or the POSIX path of a staged file).
on run argv
	set sendMode to item 1 of argv
	set targetId to item 2 of argv
	tell application "Messages"
		if sendMode is "chat" then
			set recipientRef to chat id targetId
		else
			set imessageAccount to 1st account whose service type = iMessage
			set recipientRef to participant targetId of imessageAccount
		end if
		repeat with i from 3 to (count of argv) by 2
			set partKind to item i of argv
			set partValue to item (i + 1) of argv
			if partKind is "file" then
				send (POSIX file partValue) to recipientRef
			else
				send partValue to recipientRef
			end if
		end repeat
	end tell
end run
